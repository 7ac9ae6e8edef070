"""The MLflow Model Registry side of the pipeline: scoring, registering, the champion gate.

Registry stages are deprecated in MLflow 3, so the pipeline uses aliases and tags only:

- one registered model per dataset, named by ``registry.model_name`` (``pipeline-{dataset}``);
- alias ``champion``: the model users serve (``models:/pipeline-digits@champion``);
- alias ``challenger``: the latest registered candidate that did not beat the champion;
- tags on each version: study, trial, run id, data fingerprint, test metrics, the gate's
  decision and reason, ``forced`` (and ``forced_by``) when a human overrode the gate.

The gate: a candidate takes ``champion`` only if it strictly beats the current champion on the
*current* test split by the configured metric. The champion is evaluated again on that split
rather than trusted from old tags. When the champion was trained on other data (its data
fingerprint differs from the current cache's), the two cannot be compared fairly: the current
test items may have been in the old champion's training data, so its score would be inflated.
In that case the candidate, trained on the current data, replaces it, and the reason says so.

Registering is idempotent: a run that already has a version of the registered model is not
registered again; the existing version goes through the gate again instead.
"""

from __future__ import annotations

import datetime
import getpass
import json
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import UserError, first_line
from pipeline.registry import metrics as M

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.pyfunc import PyFuncModel

    from pipeline.config import Params
    from pipeline.data.cache import Cache
    from pipeline.tracking.plain import PlainModel

    Scorer = PyFuncModel | PlainModel  # what scoring takes: the served pyfunc or its network

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREDICT_BATCH = 1024  # items per pyfunc call: bounded memory on big test splits

# Tags that summarise a version's test metrics (per-class accuracies stay in the record file).
_TAGGED_METRICS = ("accuracy", "loss", "mae", "rmse", "r2")


# --------------------------------------------------------------------------------------------
# Names and metrics
# --------------------------------------------------------------------------------------------
def registered_model_name(params: Params, dataset: str) -> str:
    """``registry.model_name`` with ``{dataset}`` filled in."""
    template = params.registry.model_name
    try:
        return template.format(dataset=dataset)
    except (KeyError, IndexError, ValueError):
        raise UserError(
            f"{params.source}: registry.model_name: {template!r} is not a valid name template; "
            "only {dataset} may appear in braces, e.g. 'pipeline-{dataset}'"
        ) from None


def gate_metric(params: Params, task: str) -> str:
    """The test metric the champion gate compares for ``task``."""
    if task == "classification":
        return params.registry.classification_metric
    return params.registry.regression_metric


def model_uri(name: str, version: str | int) -> str:
    return f"models:/{name}/{version}"


def alias_uri(name: str, alias: str = CHAMPION) -> str:
    return f"models:/{name}@{alias}"


# --------------------------------------------------------------------------------------------
# Loading and scoring a logged model
# --------------------------------------------------------------------------------------------
def load_model(uri: str) -> PyFuncModel:
    """Load a model as it is served, through the project's one no-pickle loader."""
    from pipeline.tracking.models import load_model as load_safely

    return load_safely(uri)


def load_scorer(uri: str) -> Scorer:
    """Load a model for scoring: the served weights, through the plain network where it can
    be rebuilt (no torch.export loader), else the served pyfunc; never unpickled."""
    from pipeline.tracking.models import load_scorer as load_safely

    return load_safely(uri)


def model_metadata(model: Scorer) -> dict[str, Any]:
    """What the pipeline stored with the model (task, input_shape, class_names, ...)."""
    return dict(model.metadata.metadata or {})


def predict(model: Scorer, x: np.ndarray, *, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Run the pyfunc on raw float32 inputs in batches; concatenate the outputs: class
    probabilities ``[N, K]`` (columns in ``class_names`` order) or predictions ``[N]``."""
    outputs: list[np.ndarray] = []
    for start in range(0, len(x), batch_size):
        # A copy: memory-mapped cache slices are read-only and torch warns on them.
        batch = np.array(x[start : start + batch_size], dtype=np.float32, order="C")
        outputs.append(as_array(model.predict(batch), model))
    if not outputs:
        return np.zeros((0,), dtype=np.float32)
    return np.concatenate(outputs, axis=0)


def as_array(output: Any, model: Scorer) -> np.ndarray:
    """A model's output as numbers. A served classifier answers with a table (the predicted
    ``label`` and one probability column per class name): its class columns, in the model's
    ``class_names`` order. A PyTorch model (a regressor, or a classifier logged before labels
    were served) answers with the array itself."""
    if not hasattr(output, "columns"):  # not a pandas DataFrame (pandas is not imported here)
        return np.asarray(output)
    classes = [str(c) for c in model_metadata(model).get("class_names") or []]
    return np.asarray(output[classes], dtype=np.float32)


@dataclass(frozen=True)
class Scored:
    """A model's outputs and metrics on a cache's test split."""

    metrics: dict[str, float]
    outputs: np.ndarray  # probabilities [N, K] or predictions [N]


def score(model: Scorer, cache: Cache) -> Scored:
    """Evaluate ``model`` on ``cache``'s held-out test split (raw values through the pyfunc)."""
    meta = cache.meta
    outputs = predict(model, np.asarray(cache.test_x))
    y = np.asarray(cache.test_y)
    if meta.task == "classification":
        if outputs.ndim != 2 or outputs.shape[1] != meta.num_classes:
            raise UserError(
                f"model outputs have shape {tuple(outputs.shape)}, but dataset {meta.name!r} "
                f"has {meta.num_classes} classes: the model was not trained on this dataset"
            )
        return Scored(M.classification_metrics(y, outputs, meta.class_names), outputs)
    outputs = outputs.reshape(len(y), -1)[:, 0] if outputs.ndim > 1 else outputs
    return Scored(M.regression_metrics(y, outputs), outputs)


# --------------------------------------------------------------------------------------------
# The gate (pure)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    take_champion: bool
    reason: str
    forced: bool = False  # the gate said no and --force overrode it


def decide(
    *,
    metric: str,
    candidate: dict[str, float],
    champion_version: str | None,
    champion: dict[str, float] | None,
    same_data: bool,
    force: bool,
) -> Verdict:
    """Whether the candidate takes ``champion``, and why, in one sentence.

    ``champion`` holds the current champion's metrics on the same test split (None when there
    is no champion, or when it was trained on other data: ``same_data`` False).
    """
    value = candidate.get(metric, math.nan)
    if champion_version is None:
        return Verdict(True, f"no champion yet: the candidate becomes champion ({metric} "
                             f"{_fmt(value)})")
    if not same_data:
        return Verdict(True, f"champion v{champion_version} was trained on other data (its "
                             "fingerprint differs from the current cache), so it cannot be "
                             "compared on this test split; the candidate replaces it")
    assert champion is not None
    old = champion.get(metric, math.nan)
    better = M.is_better(metric, value, old)
    relation = ">" if M.HIGHER_IS_BETTER[metric] else "<"
    if better:
        return Verdict(True, f"{metric} {_fmt(value)} {relation} {_fmt(old)} of champion "
                             f"v{champion_version} on the same test split")
    why = (f"{metric} {_fmt(value)} does not beat {_fmt(old)} of champion v{champion_version} "
           "on the same test split")
    if force:
        return Verdict(True, f"forced by --force although {why}", forced=True)
    return Verdict(False, why)


# --------------------------------------------------------------------------------------------
# Registry operations
# --------------------------------------------------------------------------------------------
def find_version(client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    """The version of ``name`` already registered from ``run_id``, if any (oldest first)."""
    query = f"name = '{_quote(name)}' and run_id = '{_quote(run_id)}'"
    found = client.search_model_versions(query)
    if not found:
        return None
    return min(found, key=lambda v: int(v.version))


def get_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version ``alias`` points at, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def model_description(name: str, dataset: str) -> str:
    """The registered model's description: what the aliases mean and how to serve it."""
    return (
        f"Models trained on dataset {dataset!r} by pipeline.search. Alias 'champion' is the "
        f"best on the held-out test split; serve it with `mlflow models serve -m "
        f"models:/{name}@champion` (or `make serve`). 'challenger' is the latest candidate "
        "that did not beat it."
    )


def ensure_registered_model(client: MlflowClient, name: str, *, dataset: str) -> None:
    """Create the registered model unless it exists (an older description of ours is renewed)."""
    from mlflow.exceptions import MlflowException

    description = model_description(name, dataset)
    try:
        found = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            raise
    else:
        old = found.description or ""
        if old != description and old.startswith("Models trained on dataset"):
            client.update_registered_model(name, description=description)
        return
    client.create_registered_model(name, tags={"dataset": dataset}, description=description)
    logger.info("created registered model %s", name)


def register(
    client: MlflowClient, *, name: str, source_uri: str, run_id: str, tags: dict[str, str]
) -> tuple[ModelVersion, bool]:
    """Register ``source_uri`` (``runs:/<run_id>/model``) as a version of ``name``, once.

    Returns the version and whether it was created now (False: the run was registered before).
    """
    existing = find_version(client, name, run_id)
    if existing is not None:
        logger.info("run %s is already version %s of %s", run_id, existing.version, name)
        source = str(existing.source or "")
        if source.startswith("models:/m-"):  # a link a failed earlier run did not write
            _link_logged_model(client, source.removeprefix("models:/"), name,
                               str(existing.version))
        return existing, False
    import mlflow
    from mlflow.exceptions import MlflowException

    # MLflow 3 keeps a model logged in a run as a LoggedModel (models:/<model_id>); register
    # that, with the run id for lineage. Anything else is registered by the URI as given.
    source, model_id = source_uri, None
    try:
        model_id = mlflow.models.get_model_info(source_uri).model_id
    except (MlflowException, OSError) as exc:
        raise UserError(f"cannot read model {source_uri!r}: {first_line(exc)}") from None
    if model_id:
        source = f"models:/{model_id}"
    version = client.create_model_version(
        name=name, source=source, run_id=run_id, tags=tags, model_id=model_id
    )
    if model_id:
        _link_logged_model(client, model_id, name, str(version.version))
    logger.info("registered %s as version %s of %s", source_uri, version.version, name)
    return version, True


def _link_logged_model(client: MlflowClient, model_id: str, name: str, version: str) -> None:
    """Tell the LoggedModel which registry versions it is, as ``mlflow.register_model`` does.

    The UI's logged-model page reads this tag; without it the page says "Not registered" next
    to a Register button. ``register_model`` itself cannot be used here: given the LoggedModel
    it records no run id, and given ``runs:/`` it registers the run's artifact folder instead.
    """

    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    model = client.get_logged_model(model_id)
    links = json.loads(model.tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
    link = {"name": name, "version": version}
    if any(str(x.get("name")) == name and str(x.get("version")) == version for x in links):
        return
    links.append(link)
    client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(links)})


# --------------------------------------------------------------------------------------------
# Promotion
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """The study's best trial, as ``reports/studies/<study>.json`` names it."""

    study: str
    dataset: str
    run_id: str
    model_uri: str  # runs:/<run_id>/model
    trial: int | None = None
    value: float | None = None  # the study's objective value (validation)
    # How the trial was chosen (``registry.select``) and the numbers that justified it, recorded
    # on the version's tags (``selected_by``, ``selection_reason``, ``selection.*``).
    selection: dict[str, str] = field(default_factory=dict)


@dataclass
class Decision:
    """What ``promote`` did and why; written to ``reports/promote/<study>.json``."""

    registered_model: str
    metric: str
    higher_is_better: bool
    candidate_version: str
    new_version: bool
    candidate_metrics: dict[str, float]
    alias: str  # the alias the candidate holds now: champion or challenger
    moved: bool  # whether the champion alias moved in this call
    forced: bool
    reason: str
    fingerprint: str
    previous_champion: dict[str, Any] | None = None  # version, run_id, metrics, same_data
    champion_version: str = ""


def promote(
    client: MlflowClient,
    *,
    name: str,
    candidate: Candidate,
    cache: Cache,
    metric: str,
    force: bool = False,
) -> Decision:
    """Register the candidate (once), run the gate, move the aliases, tag the version."""
    fingerprint = cache.meta.fingerprint
    model = load_scorer(candidate.model_uri)
    _check_candidate(candidate, model_metadata(model).get("fingerprint"), cache, metric)
    scored = score(model, cache)
    logger.info("candidate run %s: %s", candidate.run_id, _fmt_metrics(scored.metrics))

    tags = _version_tags(candidate, fingerprint=fingerprint, metric=metric,
                         metrics=scored.metrics)
    version, created = _register_candidate(client, name, candidate, tags)
    current = get_alias(client, name, CHAMPION)
    verdict, moved, previous = _judge(
        name, version=version, current=current, cache=cache, metric=metric,
        candidate_metrics=scored.metrics, force=force,
    )
    forced = moved and verdict.forced
    _move_aliases(client, name, version=version, current=current, verdict=verdict, moved=moved)
    alias = CHAMPION if verdict.take_champion else CHALLENGER
    decision_tags = _decision_tags(
        alias, verdict.reason, moved=moved, forced=forced, version_tags=version.tags or {},
        forced_by=_user() if forced else None,
    )
    for key, value in decision_tags.items():
        client.set_model_version_tag(name, version.version, key, value)

    champion_now = get_alias(client, name, CHAMPION)
    return Decision(
        registered_model=name,
        metric=metric,
        higher_is_better=M.HIGHER_IS_BETTER[metric],
        candidate_version=str(version.version),
        new_version=created,
        candidate_metrics=scored.metrics,
        alias=alias,
        moved=moved,
        forced=forced,
        reason=verdict.reason,
        fingerprint=fingerprint,
        previous_champion=previous,
        champion_version="" if champion_now is None else str(champion_now.version),
    )


def _check_candidate(candidate: Candidate, model_fp: Any, cache: Cache, metric: str) -> None:
    """Refuse a candidate the gate could not judge fairly, before anything is registered."""
    fingerprint = cache.meta.fingerprint
    # A model trained on an older cache would be scored on test items it may have trained on.
    if model_fp and model_fp != fingerprint:
        raise UserError(
            f"the best trial of study {candidate.study!r} (run {candidate.run_id}) was trained on "
            f"data with fingerprint {str(model_fp)[:12]}…, but the cache for dataset "
            f"{cache.meta.name!r} now has {fingerprint[:12]}…; rerun the search "
            f"(dvc repro or python -m pipeline.search --study {candidate.study})"
        )
    if metric not in M.HIGHER_IS_BETTER:
        raise UserError(f"registry: unknown gate metric {metric!r}")


def _version_tags(
    candidate: Candidate, *, fingerprint: str, metric: str, metrics: dict[str, float]
) -> dict[str, str]:
    """The lineage and test-metric summary every candidate version carries."""
    return {
        "study": candidate.study,
        "trial": "" if candidate.trial is None else str(candidate.trial),
        "run_id": candidate.run_id,
        "dataset": candidate.dataset,
        "fingerprint": fingerprint,
        "gate_metric": metric,
        **{f"test/{k}": _fmt(v) for k, v in metrics.items() if k in _TAGGED_METRICS},
        **candidate.selection,
    }


def _register_candidate(
    client: MlflowClient, name: str, candidate: Candidate, tags: dict[str, str]
) -> tuple[ModelVersion, bool]:
    """The candidate's version (registered now or before) and whether it was created now."""
    ensure_registered_model(client, name, dataset=candidate.dataset)
    version, created = register(
        client, name=name, source_uri=candidate.model_uri, run_id=candidate.run_id, tags=tags,
    )
    if not created:  # refresh the summary tags: the test split may have been rebuilt
        for key, value in tags.items():
            client.set_model_version_tag(name, version.version, key, value)
    return version, created


def _judge(
    name: str,
    *,
    version: ModelVersion,
    current: ModelVersion | None,
    cache: Cache,
    metric: str,
    candidate_metrics: dict[str, float],
    force: bool,
) -> tuple[Verdict, bool, dict[str, Any] | None]:
    """``(verdict, moved, previous_champion)``: the gate run against the current champion.

    ``moved`` is False when the candidate already is the champion: there is nothing to move,
    and re-scoring a model against itself would only be wasted work.
    """
    if current is not None and current.version == version.version:
        return Verdict(True, f"v{version.version} is already the champion"), False, None
    champ_metrics: dict[str, float] | None = None
    same_data = True
    previous: dict[str, Any] | None = None
    if current is not None:
        champ_metrics, same_data = _score_champion(name, current, cache)
        previous = {
            "version": current.version,
            "run_id": current.run_id,
            "same_data": same_data,
            "metrics": champ_metrics,
        }
    verdict = decide(
        metric=metric,
        candidate=candidate_metrics,
        champion_version=None if current is None else current.version,
        champion=champ_metrics,
        same_data=same_data,
        force=force,
    )
    return verdict, verdict.take_champion, previous


def _score_champion(
    name: str, current: ModelVersion, cache: Cache
) -> tuple[dict[str, float] | None, bool]:
    """``(metrics, same_data)`` of the current champion on ``cache``'s test split.

    The metrics are None when the champion was trained on other data: a score on test items it
    may have trained on would be inflated, so it is not computed at all.
    """
    fingerprint = cache.meta.fingerprint
    # Our versions carry the fingerprint as a tag; one registered by hand may only
    # have it in the model's metadata (or nowhere: then assume the same data).
    champ_model = None
    champ_fp = (current.tags or {}).get("fingerprint")
    if not champ_fp:
        champ_model = load_scorer(model_uri(name, current.version))
        champ_fp = model_metadata(champ_model).get("fingerprint")
    same_data = not champ_fp or champ_fp == fingerprint
    if not same_data:
        return None, False
    champ_model = champ_model or load_scorer(model_uri(name, current.version))
    champ_metrics = score(champ_model, cache).metrics
    logger.info("champion v%s: %s", current.version, _fmt_metrics(champ_metrics))
    return champ_metrics, True


def _move_aliases(
    client: MlflowClient,
    name: str,
    *,
    version: ModelVersion,
    current: ModelVersion | None,
    verdict: Verdict,
    moved: bool,
) -> None:
    """Point ``champion`` or ``challenger`` at the candidate, as the verdict says."""
    if moved:
        client.set_registered_model_alias(name, CHAMPION, version.version)
        if current is not None and str(current.version) != str(version.version):
            _mark_superseded(client, name, str(current.version), str(version.version))
        # A version cannot be both: the new champion stops being the challenger.
        challenger = get_alias(client, name, CHALLENGER)
        if challenger is not None and challenger.version == version.version:
            client.delete_registered_model_alias(name, CHALLENGER)
        logger.info("alias %s -> v%s: %s", CHAMPION, version.version, verdict.reason)
    elif not verdict.take_champion:
        client.set_registered_model_alias(name, CHALLENGER, version.version)
        logger.info("alias %s -> v%s: %s", CHALLENGER, version.version, verdict.reason)


def _decision_tags(
    alias: str,
    reason: str,
    *,
    moved: bool,
    forced: bool,
    version_tags: dict[str, str],
    forced_by: str | None,
) -> dict[str, str]:
    """The gate's decision as version tags (``forced_by`` is set only when ``forced``)."""
    tags = {
        "decision": alias,
        "decision_reason": reason,
        "promoted_by": "pipeline.promote",
    }
    # `forced` says how the version last took champion: by the gate or by a human's --force.
    # A champion re-confirmed without moving keeps the tag from when it took the alias.
    if moved or "forced" not in version_tags:
        tags["forced"] = "true" if forced else "false"
    if forced and forced_by is not None:
        tags["forced_by"] = forced_by
    return tags


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:.6g}"


def _fmt_metrics(values: dict[str, float]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in values.items() if k in _TAGGED_METRICS)


def _quote(text: str) -> str:
    return text.replace("'", "\\'")


def _mark_superseded(client: MlflowClient, name: str, old: str, new: str) -> None:
    """The champion that lost its alias says so: by which version and when (UTC)."""

    when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    tags = {"decision": "superseded", "superseded_by": new, "superseded_at": when}
    for key, value in tags.items():
        client.set_model_version_tag(name, old, key, value)
    logger.info("v%s superseded by v%s", old, new)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
