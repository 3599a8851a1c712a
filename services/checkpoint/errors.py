"""The one error a bad checkpoint directory raises; its message names the problem and the fix."""


class CheckpointError(ValueError):
    pass
