"""The one error type users see: bad input or a state the product refuses to work from."""


class ZooError(ValueError):
    """Raised with a message that names the file, layer or value at fault."""
