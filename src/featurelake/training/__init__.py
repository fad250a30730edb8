"""Training sets: point-in-time correct joins of an entity frame against feature views, with provenance.

``build_training_set(project, entities, ["view:feature", ...], as_of=...)`` reads each view at one Iceberg
snapshot, joins point in time (a NumPy sort-merge over Arrow) and returns a table carrying its provenance in
the schema metadata key ``featurelake.provenance``; ``provenance=`` rebuilds the same bytes from a previous set.
"""

from featurelake.training.build import (
    TrainingSetResult,
    build_training_set,
    parse_features,
    write_training_set,
)
from featurelake.training.entities import TIMESTAMP_COLUMN, fingerprint, load_entities
from featurelake.training.join import JoinStats, ViewFrame, point_in_time_join
from featurelake.training.provenance import METADATA_KEY, FeatureRef, Provenance

__all__ = [
    "METADATA_KEY",
    "TIMESTAMP_COLUMN",
    "FeatureRef",
    "JoinStats",
    "Provenance",
    "TrainingSetResult",
    "ViewFrame",
    "build_training_set",
    "fingerprint",
    "load_entities",
    "parse_features",
    "point_in_time_join",
    "write_training_set",
]
