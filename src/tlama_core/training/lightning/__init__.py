"""The adapters Lightning calls: the LightningModule, the hook bridge, the step cadence, signals, progress, precision
and the one file of Lightning's private names."""
