"""The Keras callbacks of a fine-tuning run: learning-rate logging, checkpoints, CSV and TensorBoard logs, backup.

Example:
    >>> model.fit(train, callbacks=run_callbacks(RunPaths("runs/mine"), monitor="val_accuracy", mode="max"))
"""


def learning_rate_logger():
    """A Keras callback adding the current `learning_rate` to the epoch logs (so CSV and TensorBoard get it).

    Example:
        >>> model.fit(x, y, callbacks=[learning_rate_logger(), keras.callbacks.CSVLogger("log.csv")])
    """
    import keras
    from keras import ops

    class LearningRateLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["learning_rate"] = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))

    return LearningRateLogger()


def best_logged_value(rows, monitor, mode):
    """The best `monitor` value of the logged epochs (`read_log` rows), or None: the bar a resumed run's best
    checkpoint must beat."""
    values = [r[monitor] for r in rows if monitor in r]
    if not values:
        return None
    return min(values) if mode == "min" else max(values)


def run_callbacks(paths, *, monitor, mode, best_so_far=None, backup_freq="epoch", extra=None):
    """The callbacks that write a run's folder during training, in an order that never loses a finished epoch.

    Everything of an epoch is written before its backup; the last checkpoint precedes the CSV row, so a run resumed
    from it never skips an epoch.

    Args:
        paths: the run's `RunPaths`.
        monitor: metric of the best checkpoint; `mode`: `"min"` or `"max"`.
        best_so_far: the best `monitor` value of earlier epochs (resumed runs), or None.
        backup_freq: `BackupAndRestore` save frequency (`"epoch"` or steps).
        extra: more callbacks, run before the backup.

    Returns:
        A list of Keras callbacks.

    Example:
        >>> callbacks = run_callbacks(paths, monitor="loss", mode="min")
    """
    import keras

    return [
        learning_rate_logger(),
        keras.callbacks.ModelCheckpoint(paths.last),
        keras.callbacks.ModelCheckpoint(paths.best, monitor=monitor, mode=mode, save_best_only=True,
                                        initial_value_threshold=best_so_far),
        keras.callbacks.CSVLogger(paths.csv, append=True),
        keras.callbacks.TensorBoard(paths.logs),
        *(extra or []),
        keras.callbacks.BackupAndRestore(paths.backup, save_freq=backup_freq),
    ]
