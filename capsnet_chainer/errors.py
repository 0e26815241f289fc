"""The errors a user can fix: a wrong setting, a missing or corrupt file, a GPU that is
not there, a run that diverged.

The library raises them with a message that says what is wrong and, where it can, what
to do; ``train.py`` and ``analyze.py`` print that message as one ``error:`` line
(:mod:`capsnet_chainer.cli`). Any other exception is a bug and keeps its traceback.
"""


class CapsNetError(Exception):
    """A failure the user can fix; its message is meant to be read as one line."""


class SettingError(CapsNetError, ValueError):
    """A setting is out of range or does not fit the others.

    Args:
        setting (str): The keyword of the setting (``'max_shift'``); the scripts name
            it as their flag (``--max-shift``).
        message (str): What is wrong with it, and what to do.
        value: The value given, where the message should show it.
    """

    _NO_VALUE = object()

    def __init__(self, setting, message, value=_NO_VALUE):
        self.setting = setting
        self.message = message
        self.value = value
        shown = setting if value is self._NO_VALUE else '{}={!r}'.format(setting, value)
        super().__init__('{}: {}'.format(shown, message))

    def has_value(self):
        """Whether the error names the value given."""
        return self.value is not self._NO_VALUE
