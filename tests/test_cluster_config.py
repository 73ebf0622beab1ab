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
    # The head's GCS keeps 10,000 task records for the dashboard, not Ray's 100,000.
    assert "--system-config='{\"task_events_max_num_task_in_gcs\": 10000}'" in head
    assert set(config["available_node_types"]) == {"head", "gpu_worker", "sandbox_worker"}


def test_a_ray_a_run_starts_reports_no_task_events_or_keeps_the_number_asked():
    """`ray.task_events_kept` reaches the Ray the run starts: 0 turns the reporting off (Ray's
    default kept 100,000 records in the GCS, which grew a long run's by 50 MiB), a number caps
    the GCS's store. In a child process: the test process may hold a Ray of its own."""
    import subprocess
    import sys

    code = (
        "import sys, ray\n"
        "from ouroboros.config import load_config\n"
        "from ouroboros.loop import init_ray\n"
        "cfg = load_config('configs/smoke.yaml', sys.argv[1:])\n"
        "assert init_ray(cfg)\n"
        "system = ray._private.worker._global_node._ray_params._system_config\n"
        "print(system.get('task_events_report_interval_ms'), ray._config.task_events_max_num_task_in_gcs())\n"
        "ray.shutdown()\n"
    )
    runs = {kept: subprocess.run([sys.executable, "-c", code, f"ray.task_events_kept={kept}"],
                                 capture_output=True, text=True, timeout=180) for kept in (0, 2500)}
    for kept, proc in runs.items():
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert runs[0].stdout.split() == ["0", "100000"]  # nothing reported, so nothing kept
    assert runs[2500].stdout.split() == ["None", "2500"]
