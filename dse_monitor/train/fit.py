"""``dse-monitor fit`` (and ``validate`` / ``test``): Lightning's ``LightningCLI`` over
:class:`~dse_monitor.train.model.ImageClassifier` (or the LightningModule a config names by
``class_path``) and :class:`~dse_monitor.train.data.ImageDataModule`.

Every argument of the model, the data, the trainer and its callbacks (``DSEMonitor`` among
them) can be set in the YAML config and overridden on the command line. ``data.num_classes``
and ``data.image_size`` are passed to the model, ``model.in_chans`` to the data. A
configuration error is one message on stderr (``dse-monitor --debug fit ...`` or
``DSE_MONITOR_DEBUG=1`` shows the traceback); torch uses the cores this process may use
unless ``OMP_NUM_THREADS`` says otherwise.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Sequence

__all__ = ["config_error_message", "run_fit", "set_default_threads"]

DEBUG_ENV = "DSE_MONITOR_DEBUG"
MAX_LINES = 15  # the messages of this package fit that (a dataset's file list)
# jsonargparse raises (to be shown as one message) instead of printing the whole usage and exiting
_PARSER_KWARGS = {"prog": "dse-monitor", "exit_on_error": False,
                  **{c: {"exit_on_error": False} for c in ("fit", "validate", "test")}}


def _cli_class(model_key: str = "model") -> type:
    from lightning.pytorch.cli import LightningCLI

    from .runs import flatten
    from .scalars import EpochScalars
    from .summary import run_table

    class DSEMonitorCLI(LightningCLI):
        """LightningCLI that links data and model and reports where the logs are."""

        def add_arguments_to_parser(self, parser: Any) -> None:
            parser.link_arguments("data.image_size", f"{model_key}.img_size")
            parser.link_arguments(f"{model_key}.in_chans", "data.in_chans")
            parser.link_arguments("data.num_classes", f"{model_key}.num_classes", apply_on="instantiate")

        def _hparams(self) -> dict[str, Any]:
            cfg = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
            tree = cfg.as_dict() if hasattr(cfg, "as_dict") else dict(cfg)
            flat = flatten({k: tree.get(k) for k in ("model", "data")})
            flat["seed_everything"] = tree.get("seed_everything")
            return {k: v for k, v in flat.items() if isinstance(v, (int, float, str, bool)) or v is None}

        def before_fit(self) -> None:
            trainer = self.trainer
            if not any(isinstance(cb, EpochScalars) for cb in trainer.callbacks):
                trainer.callbacks.append(EpochScalars())  # the accuracies of the closing table
            for logger in trainer.loggers:
                logger.log_hyperparams(self._hparams())
            if trainer.is_global_zero:
                tb = _tensorboard_logger(trainer)
                if tb is not None:
                    print(f"dse-monitor: logs in {tb.log_dir}")
                    print(f"dse-monitor: view them with: tensorboard --logdir {tb.save_dir}")
                elif trainer.loggers:
                    print(f"dse-monitor: logs in {trainer.log_dir}")
                else:
                    print("dse-monitor: no logger configured; the curves are only printed at the end")
                sys.stdout.flush()

        def after_fit(self) -> None:
            if self.trainer.is_global_zero:
                table = run_table(self.trainer)
                if table:
                    print(table)
                tb = _tensorboard_logger(self.trainer)
                if tb is not None:
                    print(f"dse-monitor: logs in {tb.log_dir}  (tensorboard --logdir {tb.save_dir})")
                sys.stdout.flush()

    return DSEMonitorCLI


def _tensorboard_logger(trainer: Any) -> Any:
    from lightning.pytorch.loggers import TensorBoardLogger

    return next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)


def _names_a_model_class(args: Sequence[str]) -> bool:
    """Whether the configs or the arguments choose the model by ``class_path`` (e.g. ``SimCLRModule``)."""
    import yaml

    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("-c", "--config", action="append", default=[])
    pre.add_argument("--model")
    pre.add_argument("--model.class_path", dest="class_path")
    known, _ = pre.parse_known_args(list(args))
    if known.model is not None or known.class_path is not None:
        return True
    for path in known.config:
        if Path(path).is_file():
            model = (yaml.safe_load(Path(path).read_text()) or {}).get("model")
            if isinstance(model, dict) and "class_path" in model:
                return True
    return False


def set_default_threads() -> int | None:
    """Give torch one thread per core this process may use, unless the user chose (``OMP_NUM_THREADS``).

    torch's default counts the machine's cores, also those a container or ``taskset`` keeps
    from the process, and oversubscribes them. Returns the new count, or None if unchanged.
    """
    import torch

    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity mask
        cores = os.cpu_count() or 1
    if torch.get_num_threads() == cores:
        return None
    torch.set_num_threads(cores)
    return cores


def config_error_message(err: BaseException) -> str:
    """One message for a configuration error, cut to a screen: what the code that refused the value said
    (not jsonargparse's wrappers around it), after the option (``--trainer.max_epochs``) or the class
    (``DSEMonitor``) that jsonargparse names.

    >>> print(config_error_message(ValueError("Given value: [Namespace(class_path='dse_monitor.DSEMonitor')]: "
    ...                                           "sigma must be a positive number, got 0.0")))
    DSEMonitor: Given value: [Namespace(class_path='dse_monitor.DSEMonitor')]: sigma must be a positive number, got 0.0
    """
    chain = [err]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    said = next((e for e in chain if not _raised_by_jsonargparse(e)), chain[-1])
    message = str(said).strip() or type(said).__name__
    text = " ".join(str(e) for e in chain)
    key = re.search(r'[Pp]arser key "([^"]+)"', text)
    owner = re.search(r"class_path='(?:[\w.]+\.)?(\w+)'", text)
    where = [f"--{key.group(1)}"] if key else []
    where += [owner.group(1)] if owner and owner.group(1) not in message.split(":")[0] else []
    if where:
        message = f"{' '.join(where)}: {message}"
    lines = message.splitlines()
    return "\n".join(lines[:MAX_LINES] + (["  ..."] if len(lines) > MAX_LINES else []))


def _raised_by_jsonargparse(err: BaseException) -> bool:
    frames = traceback.extract_tb(err.__traceback__) if err.__traceback__ is not None else []
    return bool(frames) and f"{os.sep}jsonargparse{os.sep}" in frames[-1].filename


def _config_errors() -> tuple[type[BaseException], ...]:
    """What means "the configuration is wrong" (a bad value, a missing file, a wrong layer name): shown as
    one message. Anything else (a bug, out of memory) keeps its traceback."""
    from jsonargparse import ArgumentError
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    return (ValueError, TypeError, FileNotFoundError, ArgumentError, MisconfigurationException)


def run_fit(args: Sequence[str], debug: bool = False) -> int:
    """``dse-monitor fit|validate|test ARGS``; 2 with one message on a configuration error."""
    import lightning.pytorch as pl

    from .data import ImageDataModule
    from .model import ImageClassifier

    threads = set_default_threads()
    if threads is not None:
        print(f"dse-monitor: torch uses {threads} threads (the cores this process may use; "
              "set OMP_NUM_THREADS to choose)", flush=True)
    # ImageClassifier unless a config names another LightningModule by class_path (the
    # contrastive configs); the plain configs keep their flat `model:` section.
    subclass = _names_a_model_class(args)
    cli_cls = _cli_class("model.init_args" if subclass else "model")
    debug = debug or bool(os.environ.get(DEBUG_ENV))
    # LightningCLI reads them (it warns when also given args); argv[0] stays the program's path, which
    # Lightning's DDP launcher runs again in each new process (`python <argv[0]> <args>`)
    argv, sys.argv = sys.argv, [sys.argv[0] if sys.argv else "dse-monitor", *args]
    try:
        cli_cls(pl.LightningModule if subclass else ImageClassifier, ImageDataModule,
                subclass_mode_model=subclass, save_config_kwargs={"overwrite": True},
                auto_configure_optimizers=False, parser_kwargs=_PARSER_KWARGS)
    except _config_errors() as err:
        if debug:
            raise
        command = args[0] if args else "fit"
        print(f"dse-monitor {command}: {config_error_message(err)}\n"
              f"(the traceback: dse-monitor --debug {command} ... or {DEBUG_ENV}=1)", file=sys.stderr)
        return 2
    finally:
        sys.argv = argv
    return 0
