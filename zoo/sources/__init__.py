"""Where models come from: the zoo catalogue, local folders and the Hub, packaged offline assets."""
