"""Behavioural checks of grown checkpoints against their sources.

verify_checkpoint(source, grown, ...) -> VerifyReport; report.raise_if_failed() turns failed
checks into a VerifyError. Heavy modules load on first use, as in the package root.
"""


def __getattr__(name: str):
    if name == "verify_checkpoint":
        from modelsurgeon.verify.api import verify_checkpoint

        return verify_checkpoint
    if name in ("VerifyReport", "Check"):
        from modelsurgeon.verify import report

        return getattr(report, name)
    raise AttributeError(name)


__all__ = ["verify_checkpoint", "VerifyReport", "Check"]
