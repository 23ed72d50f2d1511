"""The one exception a user can cause."""


class GraftError(Exception):
    """A mistake in the user's recipe, data or command: one line naming the file/field and the fix.

    The CLI prints it without a traceback and exits non-zero; anything else is a bug in graft.
    """
