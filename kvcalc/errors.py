"""The few domain exceptions. The CLI maps every one of them to exit status 2 in one place."""


class KvcalcError(Exception):
    """Bad input a user can act on: the message is one line naming the file, field and value."""


class SpecError(KvcalcError):
    """A spec file (or bundled spec) is unreadable, malformed, or describes impossible dimensions."""


class UnknownModelError(KvcalcError):
    """A MODEL argument names neither a bundled model nor an existing file."""


class OptionError(KvcalcError):
    """A command-line value is malformed or does not apply to the chosen model."""
