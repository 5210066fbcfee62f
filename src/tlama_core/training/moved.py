"""The module paths training/ had before it was grouped by job, kept for one release: each old path is a module
whose names resolve to where they live now, with a DeprecationWarning; the old paths are removed in 0.3."""

from __future__ import annotations

import importlib
import sys
import types
import warnings

PACKAGE = "tlama_core.training"

# old module (under tlama_core.training) -> {name: the module that holds it now}
MOVED: dict[str, dict[str, str]] = {
    "module": {"TlamaLightningModule": PACKAGE, "empty_init": PACKAGE},
    "precision": {"has_fast_bf16": PACKAGE},
    "finite": {"weights_finite": PACKAGE},
    "csv_log": {"read_rows": PACKAGE},
    "checkpointing": {"AtomicCheckpointIO": PACKAGE, "CheckpointError": "tlama_core.checkpoints",
                      "find_last_checkpoint": "tlama_core.checkpoints",
                      "step_checkpoint_name": "tlama_core.checkpoints"},
    "batching": {"flops_per_token": PACKAGE, "peak_flops": PACKAGE},
    "hooks": {"HOOKS": f"{PACKAGE}.lightning.hooks"},
    "loggers": {"NAMES": f"{PACKAGE}.records.loggers"},
    "run_lock": {"RunLock": "tlama_core.locks", "RunLockError": "tlama_core.locks", "LOCK_NAME": "tlama_core.locks"},
}


def old_module(old: str, names: dict[str, str]) -> types.ModuleType:
    """A module at `tlama_core.training.<old>` handing on `names`, each with a DeprecationWarning naming its path."""
    module = types.ModuleType(f"{PACKAGE}.{old}", f"Moved (removed in 0.3): {', '.join(sorted(names))}.")

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")
        warnings.warn(f"{module.__name__}.{name} moved to {names[name]}.{name}; the old path is removed in 0.3.",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(names[name]), name)

    module.__getattr__ = __getattr__
    return module


def install() -> None:
    """Make every old path importable (`from tlama_core.training.precision import has_fast_bf16` still works)."""
    package = sys.modules[PACKAGE]
    for old, names in MOVED.items():
        module = sys.modules.setdefault(f"{PACKAGE}.{old}", old_module(old, names))
        setattr(package, old, module)
