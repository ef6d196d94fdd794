"""The exit codes of every `lab` command, in one place (a nightly runner reads them)."""

PASS = 0  # every SLA held (lab run); nothing regressed (lab compare --strict)
FAILED = 1  # an SLA failed or a peer was not ready or lost (lab run); a regression under --strict; a link measured wrong
BAD_INPUT = 2  # bad input or a setup error: one line naming the field, file or fix
CRASH = 3  # the lab itself crashed (a bug): traceback printed, everything cleaned up
INCONCLUSIVE = 4  # lab run: no SLA failed, but some could not be judged: the machine was too busy (the fidelity guard)
INTERRUPTED = 130  # Ctrl-C or SIGTERM; partial results kept

SEVERITY = (PASS, INCONCLUSIVE, FAILED, BAD_INPUT, CRASH, INTERRUPTED)  # least to most


def worst(codes: list[int]) -> int:
    """The exit code of several runs (--repeat, a sweep): the most severe."""
    return max(codes, key=SEVERITY.index, default=PASS)
