"""`serve --nodes`: the head node runs vLLM on Ray and says how the workers join."""

from qwdeploy.cli import app


def test_multinode_serve_dry_run_uses_ray_and_prints_the_worker_steps(runner):
    result = runner.invoke(
        app,
        [
            "serve",
            "Qwen/Qwen3-235B-A22B",
            "--gpu",
            "H100",
            "--nodes",
            "2",
            "--num-gpus-per-node",
            "8",
            "--head-address",
            "10.0.0.1",
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "--distributed-executor-backend ray" in result.stdout
    assert "--pipeline-parallel-size 2" in result.stdout and "--tensor-parallel-size 8" in result.stdout
    assert "ray start --address=10.0.0.1:6379" in result.stderr
