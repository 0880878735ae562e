"""The errors users see: bad input or a state the product refuses to work from. Torch-free and
importing nothing of the project, so that the engine may import it too (the layering contract)."""


class UserError(ValueError):
    """An error the user can fix from its message alone: the CLI prints it on one line, no traceback."""


class ZooError(UserError):
    """Raised with a message that names the file, layer or value at fault."""
