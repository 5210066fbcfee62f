"""What each `class_path` slot of a `tlama fit` config may build, as types jsonargparse enforces.

A config is code: `class_path` names something to call. LightningCLI calls only subclasses of a parameter's type
(a `list[Callback]` slot takes Callback classes), and so do these slots: `trainer.callbacks` takes Lightning
callbacks and hook objects, `trainer.logger` Lightning loggers (or a logger name), `trainer.strategy` Lightning
strategies (or a name), `trainer.trainer_kwargs` what `lightning.Trainer`'s own parameters take, `data`
LightningDataModules. jsonargparse refuses anything else while parsing, before a single class is called.
"""

from __future__ import annotations

import abc
from typing import Any, Literal

import lightning as L
from jsonargparse import ArgumentParser, set_parsing_settings
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.strategies import Strategy

from tlama_core.cli.errors import HEAD, one_line
from tlama_core.training.arguments import OWNED_KEYWORDS
from tlama_core.training.lightning.hooks import HOOKS
from tlama_core.training.records.loggers import NAMES


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


def keep_untyped_values_as_data() -> None:
    """A `class_path` inside the value of an untyped or `Any` parameter (of a class a slot may build) stays a plain
    dict: jsonargparse otherwise builds whatever it names, a way round every slot's type. A process-wide jsonargparse
    setting; False is its default from v5 on."""
    set_parsing_settings(instantiate_subclass_spec_in_any=False)


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
            message = (message.replace('Parser key "', f'Parser key "{self.key}.', 1) if HEAD.match(message)
                       else f'Parser key "{self.key}": {message}')
            raise ValueError(one_line(message)) from err
