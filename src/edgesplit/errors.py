"""Exceptions raised by edgesplit.

Every error a user can cause derives from :class:`EdgesplitError`; the CLI turns it into one line on
stderr and exit code 2, and library callers can catch it in one place::

    EdgesplitError            anything the user can fix: a name, a file, a shape, an option
    ├── ModelNotFound         a model name no source knows (suggests close names)
    ├── WeightsError          a weights file that cannot be read or does not fit the model
    ├── InputShapeError       a malformed --input-shape / --input-size
    ├── TraceError            a model that neither torch.fx nor torch.export can trace
    ├── CutNotFound           a cut name or pattern that matches no cut (lists what exists)
    ├── TraceFileError        a network or load trace file that is malformed (names the line)
    ├── ProfileError          a profile file that is malformed or lacks a cut or batch size needed
    └── FrameError            a wire frame that is malformed, oversized or not for this model (HTTP 4xx)
"""

from __future__ import annotations


class EdgesplitError(Exception):
    """Base class: an error the user can fix, with a message that says how."""


class ModelNotFound(EdgesplitError):
    """The model name is not known to any model source."""


class WeightsError(EdgesplitError):
    """A weights file is unreadable, is not a state_dict, or does not fit the model."""


class InputShapeError(EdgesplitError):
    """An input shape or size that cannot be parsed or is not positive."""


class TraceError(EdgesplitError):
    """The model cannot be turned into a graph by torch.fx nor by torch.export."""


class CutNotFound(EdgesplitError):
    """A cut name or pattern that matches no cut of the analysed model."""


class TraceFileError(EdgesplitError):
    """A network-rate or server-load trace file that cannot be read or is malformed."""


class ProfileError(EdgesplitError):
    """A profile file that is missing, malformed, or lacks a cut or batch size that is needed."""


class FrameError(EdgesplitError):
    """A wire frame that cannot be accepted; the message names the field and the allowed values.

    ``status`` is the HTTP status a server answers with: 400 malformed, 409 another model, 413 too
    large, 422 well-formed but not for any cut of this model.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
