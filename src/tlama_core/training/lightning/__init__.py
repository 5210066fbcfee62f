"""The adapters Lightning calls: the LightningModule, the hook bridge, the step cadence, signals, progress and
precision."""
