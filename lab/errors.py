"""Every error the lab raises on purpose, in one family, each class with its exit code.

A command maps errors in one place (lab/cli.py): a `LabError` prints its message as one line
and exits with its class's code; anything else is a bug in the lab (exit 3, traceback). So an
error raised deep in a run (tc refusing a qdisc while links are applied, a cgroup that cannot be
made) ends the command the same way as one raised while its input is read. After httpx's one
exception hierarchy; the codes are lab/exits.py's.
"""

from __future__ import annotations

from lab import exits


class LabError(Exception):
    """An error the lab expected: one line saying what and the fix."""

    exit_code = exits.CRASH
    label = "Error"  # what the command prints before the message (click's own word for its errors)


class BadInput(LabError):
    """A file, directory, option or message the lab cannot use; the message names the field or file."""

    exit_code = exits.BAD_INPUT


class TopologyError(BadInput):
    """A topology file that cannot be used; the message is one line naming the field."""


class RecordsError(BadInput):
    """A results directory that cannot be read; the message names the file and the fix."""


class SetupError(LabError):
    """The run cannot start or go on here: privilege, kernel feature, limit, directory."""

    exit_code = exits.BAD_INPUT


class ResultsError(SetupError):
    """The results directory cannot be written (its disk full, removed, read-only): the run stops,
    undoes what it built, and what was written stays readable; the message names the path."""

    @classmethod
    def of(cls, path: object, exc: OSError) -> ResultsError:
        return cls(f"{path}: cannot write ({exc.strerror or exc}); free space there or choose another --out")


class NetworkError(SetupError):
    """The kernel refused part of the network; the message says what and why."""


class ShapingError(SetupError):
    """Impairment cannot be had as asked (missing kernel feature, unsupported parameter, links
    measured not doing what was configured)."""


class CgroupError(SetupError):
    """The peers' CPU quota cannot be set up (no cpu controller, no permission) or removed."""


class LimitError(SetupError):
    """A system limit too low for the run that the lab may not raise itself."""


class CalibrationError(SetupError):
    """`time_dilation: auto`'s pilot could not measure what the factor needs."""


class SlaFailed(LabError):
    """What was measured failed its check: an SLA, a peer that did not start or was lost, a
    compared metric that regressed, a link measured doing something else."""

    exit_code = exits.FAILED
    label = "failed"


class Inconclusive(LabError):
    """No SLA failed, but some could not be judged: the machine was too busy to measure them."""

    exit_code = exits.INCONCLUSIVE
    label = "inconclusive"


class Interrupted(LabError):
    """Ctrl-C or SIGTERM: everything built was undone, what was measured is kept."""

    exit_code = exits.INTERRUPTED
    label = "interrupted"


OUTCOMES: dict[str, type[LabError]] = {"fail": SlaFailed, "inconclusive": Inconclusive}  # a run's outcome, when not pass
