"""User-facing errors: one line that says what is wrong and what to do about it."""


class MedSynError(Exception):
    """An error caused by the user's input or environment (bad file, unknown model, empty prompt...).

    The CLI prints it as ``error: <message>`` without a traceback; the Slicer module shows it in the status line.
    """
