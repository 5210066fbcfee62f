"""jsonargparse's error trees, for the mistakes a `tlama fit` config can hold, as one line naming the key, the
value and the fix (a union of types reports every alternative's failure, most of them beside the point)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from tlama_core.training.lightning.hooks import HOOKS

HEAD = re.compile(r'^Parser key "([^"]+)":')
_NESTED = re.compile(r"NestedArg\(key='([^']*)', val=(.*)\)")
_REFUSED = re.compile(r"Import path ?(\S*) does not correspond to a subclass of (\w+)")
_GIVEN = re.compile(r"Given value: (.+)")
_PROBLEM = re.compile(r"Problem with given class_path '([^']+)':\s*\n\s*(.+)")
_OPTION = re.compile(r"Option '([^']+)' is not accepted")
_UNKNOWN_NAME = re.compile(r"Expected a dot import path string: (.+)")
_CHOICES = re.compile(r"Expected a typing\.Literal\[([^\]]+)\]")
_REQUIRED = re.compile(r"the following arguments are required: (.+)")
_ARGUMENT = re.compile(r'Parser key "([^"]+)":')
_EXPECTED = re.compile(r"^\s*- (?:Expected a <class '([\w.]+)'>|Not of type (\w+): (.+))$", re.M)


def one_line(message: str) -> str:
    """jsonargparse's tree of union errors, for the cases a config's slots produce, as one line naming the key,
    the value and what the slot takes; any other message as it is."""
    head = HEAD.match(message)
    name = head.group(1) if head else ""
    key = f'Parser key "{name}": ' if head else ""
    problems = [(path, reason.strip()) for path, reason in _PROBLEM.findall(message)]
    for path, reason in problems:  # the class given was found; its arguments were not right
        if _is_slot_base(path):
            continue
        option, required, argument = _OPTION.match(reason), _REQUIRED.match(reason), _ARGUMENT.match(reason)
        if option:
            return f"{key}{path} takes no argument {option.group(1)!r}."
        if required:
            first = required.group(1).split(",")[0].strip()
            return (f"{key}{path} needs {required.group(1)}: give it after the class (--{name}.{first}=VALUE) "
                    "or under init_args in YAML.")
        if argument:
            return f"{key}{path}: {_bad_argument(argument.group(1), _block(message, reason))}."
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
    home = _slot_of_lightning_class(unknown.group(1)) if unknown else None
    if home is not None and home != name:  # a known class, in the wrong slot
        return f"{key}{unknown.group(1)!r} is Lightning's, for --{home}, not --{name}: give it there."
    if unknown:
        choices = _CHOICES.search(message)
        names = f"one of {choices.group(1)}, nor " if choices else ""
        return (f"{key}{unknown.group(1)!r} is neither {names}a class name known here (Lightning's own, e.g. "
                "ModelCheckpoint, TensorBoardLogger, DDPStrategy) nor an import path (package.module.Class).")
    return message


_LIGHTNING_SLOTS = {"lightning.pytorch.callbacks": "trainer.callbacks", "lightning.pytorch.loggers": "trainer.logger",
                    "lightning.pytorch.strategies": "trainer.strategy"}


def _slot_of_lightning_class(given: str) -> str | None:
    """The slot taking the Lightning class named `given` ("TensorBoardLogger": trainer.logger), if any."""
    for module, slot in _LIGHTNING_SLOTS.items():
        if isinstance(getattr(importlib.import_module(module), given, None), type):
            return slot
    return None


def _block(message: str, first_line: str) -> str:
    """The lines of jsonargparse's indented report that begins with `first_line`: it and those indented deeper."""
    lines = message[message.index(first_line):].splitlines()
    start = message.rfind("\n", 0, message.index(first_line)) + 1
    indent = message.index(first_line) - start
    block = [lines[0]]
    for line in lines[1:]:
        if len(line) - len(line.lstrip()) <= indent:
            break
        block.append(line)
    return "\n".join(block)


def _bad_argument(argument: str, block: str) -> str:
    """`argument='value' is not int or None`, out of jsonargparse's report of one argument of a class."""
    given = _GIVEN.search(block)
    kinds, details = [], []
    for expected, kind, detail in _EXPECTED.findall(block):
        kinds.append("None" if (expected or kind) == "NoneType" else expected or kind)
        if detail:
            details.append(detail.strip())
    value = repr(given.group(1)) if given else "its value"
    reason = f"is not {' or '.join(kinds)}" if kinds else "is not accepted"
    return f"{argument}={value} {reason}" + (f" ({'; '.join(details)})" if details else "")


def _is_slot_base(path: str) -> bool:
    """Whether `path` names a slot's base type (lightning.Callback, ...), which jsonargparse tries when no class
    was given."""
    return path.rsplit(".", 1)[-1] in _DESCRIPTIONS


_DESCRIPTIONS = {
    "Callback": "a Lightning Callback",
    "HookObject": f"a class with one of the Trainer's hooks ({', '.join(HOOKS[:3])}, ...)",
    "Logger": "a Lightning Logger",
    "Strategy": "a Lightning Strategy",
    "LightningDataModule": "a LightningDataModule",
}


def _describe(base: str) -> str:
    return _DESCRIPTIONS.get(base, f"a {base}")


_UNION = "Does not validate against any of the Union subtypes"
_ALTERNATIVE = re.compile(r"^  - (.*)$", re.M)
_PARAMETER = re.compile(r"^(\w+)=('[^']*'|\S+?)(?=[:\s])")


def build_error(message: str, data_args: dict) -> str:
    """An error a class raised while jsonargparse built it, out of jsonargparse's report of a `Class | None`
    slot (each alternative's failure). One of the `data:` class, which names its parameters, starts with the flag
    it is about: `data_path='x': ...` (what the data readers call any path) becomes `--data.train_path='x': ...`
    (or val_path, by its value)."""
    if not message.startswith(_UNION):
        return message
    real = [m for m in _ALTERNATIVE.findall(message) if not m.startswith("Expected a <class 'NoneType'>")]
    if len(real) != 1:
        return message
    data = "LightningDataModule" in message.splitlines()[1]  # the "Subtypes: [...]" line
    message = real[0]
    parameter = _PARAMETER.match(message)
    if data and parameter:
        name, value = parameter.groups()
        if name == "data_path":
            name = next((k for k in ("train_path", "val_path") if repr(data_args.get(k)) == value), name)
        if name in data_args:
            message = f"--data.{name}={value}{message[parameter.end():]}"
    return message


def unreadable_error(err: PermissionError, data_args: dict) -> str:
    """A file the run may not read or write, named with the `--data.*` flag whose path holds it."""
    path = Path(str(err.filename)).resolve()
    flag = next((f"--data.{k}={v!r}: " for k, v in data_args.items() if k.endswith(("_path", "_dir"))
                 and v is not None and (path == Path(v).resolve() or Path(v).resolve() in path.parents)), "")
    return f"{flag}{path}: permission denied; make it readable (and the token cache writable) by this user."
