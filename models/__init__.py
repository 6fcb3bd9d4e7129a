"""The model zoo: specs, backbones, the LightningModule and the LightningDataModule."""
