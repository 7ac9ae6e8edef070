"""Configuration: ``params.yaml`` parsed once into frozen, typed dataclasses."""

from pipeline.config.params import (
    PARAMS_FILE,
    CsvDataset,
    DatasetEntry,
    EarlyStoppingConfig,
    FetchConfig,
    ImageFolderDataset,
    ImageOptions,
    JpegLabelsDataset,
    LabelledFolder,
    LrScheduleConfig,
    ModelConfig,
    Params,
    TrainConfig,
    has_dotted_field,
    load_params,
    parse_set_option,
)

__all__ = [
    "PARAMS_FILE",
    "CsvDataset",
    "DatasetEntry",
    "EarlyStoppingConfig",
    "FetchConfig",
    "ImageFolderDataset",
    "ImageOptions",
    "JpegLabelsDataset",
    "LabelledFolder",
    "LrScheduleConfig",
    "ModelConfig",
    "Params",
    "TrainConfig",
    "has_dotted_field",
    "load_params",
    "parse_set_option",
]
