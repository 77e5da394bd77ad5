"""The Lightning callback: ``Trainer(callbacks=[DSEMonitor()])`` and the DSE curves appear in the logs.

This is the class for the ``lightning`` package (``import lightning.pytorch as pl``);
:mod:`dse_monitor.pytorch_lightning` holds the same callback for ``pytorch_lightning``.
The logic lives in :class:`dse_monitor._monitor_core.DSEMonitorCore`.
"""
from __future__ import annotations

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from ._monitor_core import DEFAULT_METRICS, METRICS, DSEMonitorCore, DSEMonitorWarning

__all__ = ["DEFAULT_METRICS", "DSEMonitor", "DSEMonitorWarning", "METRICS"]

DOC = """Measure diffusion spectral entropy and mutual information of a layer during training.

    Every ``every_n_epochs`` epochs (and once before the first training step when
    ``at_init``) a fixed probe subset runs through the model in eval mode under
    ``torch.no_grad()``; forward hooks read the layers, pooled to features Z [N, D], and

    - ``dse``:    DSE(Z) = -sum_i a_i log2 a_i, a_i = |lambda_i|^t / sum_j |lambda_j|^t,
      lambda the eigenvalues of the diffusion operator of Z;
    - ``dsmi_y``: DSMI(Z;Y) = sum_y p(y) [mean_r DSE(Z_r) - DSE(Z | Y=y)], Y the labels;
    - ``dsmi_x``: DSMI(Z;X), X the probe inputs resized to ``x_size`` (nearest),
      flattened and spectrally clustered once into ``n_clusters`` groups;
    - ``cse``, ``csmi_y``, ``csmi_x``: the binning baselines.

    They are logged as ``<prefix>/<layer>/<metric>`` (e.g. ``dse/penultimate/dse``) to
    every logger with ``step`` = completed training epochs (0 = at init), and put in
    ``trainer.callback_metrics``. TensorBoard also gets the eigenvalue spectrum as a
    histogram (``dse/<layer>/spectrum``) and a custom-scalars layout. Training itself is
    untouched: every module's mode is restored, hooks are removed, random streams are
    forked and restored. Under DDP each rank probes its share and rank 0 computes. A
    failing probe pass warns and skips that measurement on every rank, a failing metric
    skips only itself, a failing file write only warns; training goes on. Configuration
    errors (unknown layer, a layer that ``forward`` never calls, missing labels) are
    raised at fit start.

    Measurements run in ``on_train_epoch_end``, after the epoch's validation. To watch a
    value with ``EarlyStopping`` / ``ModelCheckpoint``, list the monitor before them and
    let them check at train-epoch end (their default when validation runs once per
    epoch; ``check_on_train_epoch_end=True`` / ``save_on_train_epoch_end=True`` otherwise).

    Args:
        layers: module names from ``named_modules()``, or ``"penultimate"``: the input of
            the final classifier (timm ``get_classifier()``, torchvision ``fc`` /
            ``classifier`` / ``head``, else the last ``nn.Linear`` run in ``forward``).
        probe: ``"val"`` or ``"train"`` (the trainer's loaders) or a Dataset / DataLoader.
        num_samples: size of the probe subset (None: the whole split); clamped with a warning.
        seed: seed of the probe subset, the input clustering and the DSMI subsets.
        every_n_epochs: measure after every n-th training epoch.
        at_init: also measure before the first training step (logged at step 0).
        metrics: among ``"dse", "dsmi_y", "dsmi_x", "cse", "csmi_y", "csmi_x"``.
        sigma: kernel bandwidth: a number (on raw distances), ``"sqrt_dim"`` or ``"median"``.
        t: diffusion time.
        num_repetitions: random subsets per group in DSMI's unconditional term.
        n_clusters: groups for X (and continuous Y); default: the number of classes
            in the probe labels, else 10.
        x_size: side of the nearest-resized images for DSMI(Z;X) (None: no resize).
        pooling: ``"mean"`` (avg-pool maps, mean of tokens), ``"cls"`` (first token),
            ``"flatten"`` or a callable ``[B, ...] -> [B, D]``.
        batch_fn: callable ``batch -> (inputs, labels or None)``; default handles
            ``(x, y, ...)`` tuples/lists and dicts with the usual keys.
        batch_size: probe batch size (default: the source loader's, else 64).
        device: device of the metric computation (default: the features' device).
        dtype: dtype of the metric computation (default float64; ``"float32"`` is faster).
        prefix: first part of the logged keys; give two monitors different prefixes.
        log_spectrum: write eigenvalue histograms to TensorBoard.
        save_raw: write ``history.json``, ``history.csv`` and ``spectra.npz`` to
            ``<log_dir>/<prefix>_monitor``.
        solver: ``"auto"`` (exact eigen-solve up to ``AUTO_CROSSOVER`` = 4,096 probe
            points, the approximate Lanczos solver with guaranteed bounds above),
            ``"exact"`` or ``"lanczos"``. A probe too large for an exact solve in the free
            memory warns once and is measured with the streamed approximate solver. The
            spectrum histogram needs the exact path.

    Example:
        >>> monitor = DSEMonitor(layers="penultimate", num_samples=500, metrics=["dse", "dsmi_y"])
        >>> monitor.state_key
        "DSEMonitor{'prefix': 'dse', 'layers': ['penultimate'], 'probe': 'val', 'num_samples': 500, 'seed': 0}"
        >>> trainer = Trainer(callbacks=[monitor], max_epochs=10)  # doctest: +SKIP
        >>> trainer.fit(model, datamodule)                         # doctest: +SKIP
        >>> monitor.history[0]["dse/penultimate/dse"]              # doctest: +SKIP
        7.93...
    """


class DSEMonitor(DSEMonitorCore, Callback):
    __doc__ = DOC
    _tensorboard_loggers = (TensorBoardLogger,)
