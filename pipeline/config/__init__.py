"""Configuration: ``params.yaml`` parsed once into frozen, typed dataclasses.

Also the pieces every file reader of the project shares: YAML with line numbers
(:func:`read_yaml`), the typed checker (:func:`build`, :func:`convert`) and "did you mean"
(:func:`did_you_mean`).
"""

from pipeline.config._suggest import did_you_mean
from pipeline.config._typed import bounds, build, check_bounds, convert, type_name
from pipeline.config._yaml import Where, YamlDocument, parse_scalar, parse_yaml, read_yaml
from pipeline.config.params import (
    PARAMS_FILE,
    PLAIN_NAME,
    PLAIN_NAME_RULE,
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
    dotted_fields,
    has_dotted_field,
    load_params,
    parse_params,
    parse_set_option,
)

__all__ = [
    "PARAMS_FILE",
    "PLAIN_NAME",
    "PLAIN_NAME_RULE",
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
    "Where",
    "YamlDocument",
    "bounds",
    "build",
    "check_bounds",
    "convert",
    "did_you_mean",
    "dotted_fields",
    "has_dotted_field",
    "load_params",
    "parse_params",
    "parse_scalar",
    "parse_set_option",
    "parse_yaml",
    "read_yaml",
    "type_name",
]
