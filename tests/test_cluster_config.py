"""`ray_cluster.yaml` is what `ray up` reads: it must parse, and pass Ray's own launcher schema
(the same validation `ray up` runs before it starts anything)."""
from __future__ import annotations

import yaml


def test_ray_cluster_yaml_parses_and_passes_rays_launcher_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    with open("ray_cluster.yaml") as fh:
        config = yaml.safe_load(fh)
    validate_config(prepare_config(config))  # raises on a key or value the launcher would refuse
    head = " ".join(config["head_start_ray_commands"])
    assert "--resources='{\"sandbox\": 8}'" in head  # the command survived YAML quoting intact
    assert set(config["available_node_types"]) == {"head", "gpu_worker", "sandbox_worker"}
