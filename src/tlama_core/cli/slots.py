"""What each `class_path` slot of a `tlama fit` config may build, as types jsonargparse enforces.

A config is code: `class_path` names something to call. LightningCLI calls only subclasses of a parameter's type
(a `list[Callback]` slot takes Callback classes), and so do these slots: `trainer.callbacks` takes Lightning
callbacks and hook objects, `trainer.logger` Lightning loggers (or a logger name), `trainer.strategy` Lightning
strategies (or a name), `trainer.trainer_kwargs` what `lightning.Trainer`'s own parameters take, `data`
LightningDataModules. jsonargparse refuses anything else while parsing, before a single class is called.
"""

from __future__ import annotations

import abc
import re
from typing import Any, Literal

import lightning as L
from jsonargparse import ArgumentParser
from jsonargparse.typing import import_object
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.strategies import Strategy

from tlama_core.training.arguments import OWNED_KEYWORDS
from tlama_core.training.hooks import HOOKS
from tlama_core.training.loggers import NAMES


class HookObject(abc.ABC):  # noqa: B024 (no abstract methods: membership is __subclasshook__)
    """Any class defining at least one of the `Trainer`'s hooks (on_step_end, on_validate_end, ...): the plain
    callbacks the facade calls. No base class is needed; `issubclass(C, HookObject)` says whether C qualifies."""

    @classmethod
    def __subclasshook__(cls, other: type) -> bool:
        if cls is HookObject:
            return any(callable(getattr(other, hook, None)) for hook in HOOKS)
        return NotImplemented


LoggerName = Literal[NAMES]  # built by the facade under logs_dir
CallbackSlot = Callback | HookObject
LoggerSlot = LoggerName | Logger | list[LoggerName | Logger]
StrategySlot = Strategy | str  # a Lightning Strategy (its class name, path or class_path) or a name: auto, ddp, ...


class LightningKeywords:
    """`trainer_kwargs` typed by `lightning.Trainer`'s own parameters (as LightningCLI types its `trainer:`): a
    `class_path` there builds only what that parameter takes (a Profiler, a plugin, ...). Checked when parsed,
    built by `build()`; errors are a ValueError naming the key."""

    def __init__(self, values: dict[str, Any] | None, key: str = "trainer.trainer_kwargs") -> None:
        self.key, self.names = key, list(values or {})
        self._parser = ArgumentParser(exit_on_error=False)
        self._parser.add_class_arguments(L.Trainer, skip=set(OWNED_KEYWORDS))
        self._parsed = self._checked(lambda: self._parser.parse_object(values or {}, defaults=False))

    def build(self) -> dict[str, Any] | None:
        """The keywords with their classes built; None when there are none."""
        if not self.names:
            return None
        built = self._checked(lambda: self._parser.instantiate(self._parsed))
        return {name: built[name] for name in self.names}

    def _checked(self, step: Any) -> Any:
        try:
            return step()
        except Exception as err:  # jsonargparse's ArgumentError, or a TypeError/ValueError of a class it built
            message = str(err)
            message = (message.replace('Parser key "', f'Parser key "{self.key}.', 1) if _HEAD.match(message)
                       else f'Parser key "{self.key}": {message}')
            raise ValueError(one_line(message)) from err


_HEAD = re.compile(r'^Parser key "([^"]+)":')
_NESTED = re.compile(r"NestedArg\(key='([^']*)', val=(.*)\)")
_REFUSED = re.compile(r"Import path ?(\S*) does not correspond to a subclass of (\w+)")
_GIVEN = re.compile(r"Given value: (.+)")
_PROBLEM = re.compile(r"Problem with given class_path '([^']+)':\s*\n\s*(.+)")
_OPTION = re.compile(r"Option '([^']+)' is not accepted")
_UNKNOWN_NAME = re.compile(r"Expected a dot import path string: (.+)")
_CHOICES = re.compile(r"Expected a typing\.Literal\[([^\]]+)\]")


def one_line(message: str) -> str:
    """jsonargparse's tree of union errors, for the cases a config's slots produce, as one line naming the key,
    the value and what the slot takes; any other message as it is."""
    head = _HEAD.match(message)
    name = head.group(1) if head else ""
    key = f'Parser key "{name}": ' if head else ""
    problems = [(path, reason.strip()) for path, reason in _PROBLEM.findall(message)]
    for path, reason in problems:  # an argument the class given before it does not take
        option = _OPTION.match(reason)
        if option and not _is_slot_base(path):
            return f"{key}{path} takes no argument {option.group(1)!r}."
    nested = _NESTED.search(message)
    if nested:  # an argument before any class (or after a name): jsonargparse tried the slot's base type
        return (f"{key}--{name}.{nested.group(1)}={nested.group(2)} applies to no class: name the class first, "
                f"then its arguments (--{name}+=CLASS adds one to a list, --{name} CLASS sets one).")
    refused = _REFUSED.findall(message)
    if refused:
        given = _GIVEN.search(message)
        path = refused[0][0] or (given.group(1) if given else "the class")
        expected = " or ".join(dict.fromkeys(_describe(base) for _, base in refused))
        return (f"{key}{path} is not {expected}, so it is not built (a config builds only classes of the slot's "
                "type); name such a class, or remove the entry.")
    if problems:
        path, reason = problems[0]
        return f"{key}cannot import {path} ({reason})."
    unknown = _UNKNOWN_NAME.search(message)
    if unknown:
        choices = _CHOICES.search(message)
        names = f"one of {choices.group(1)}, nor " if choices else ""
        return (f"{key}{unknown.group(1)!r} is neither {names}a class name known here (Lightning's own, e.g. "
                "ModelCheckpoint, TensorBoardLogger, DDPStrategy) nor an import path (package.module.Class).")
    return message


def _is_slot_base(path: str) -> bool:
    """Whether `path` names a slot's base type, which jsonargparse tries when no class was given."""
    try:
        return import_object(path) in (Callback, HookObject, Logger, Strategy, L.LightningDataModule)
    except (ImportError, AttributeError, ValueError):
        return False


_DESCRIPTIONS = {
    "Callback": "a Lightning Callback",
    "HookObject": f"a class with one of the Trainer's hooks ({', '.join(HOOKS[:3])}, ...)",
    "Logger": "a Lightning Logger",
    "Strategy": "a Lightning Strategy",
    "LightningDataModule": "a LightningDataModule",
}


def _describe(base: str) -> str:
    return _DESCRIPTIONS.get(base, f"a {base}")
