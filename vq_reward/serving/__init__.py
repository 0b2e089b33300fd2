"""The scorer served on Ray Serve (`vq-reward serve MODEL --engine ray`, an optional extra: `pip install
"vq-reward[serve]"`).

- `protocols`: the request and answer formats (the project's JSON, verl-omni's and Flow-GRPO's pickles) and the
  checks every request passes before it is scored (the restricted unpickler, image decoding);
- `ray_app`: the deployments (`ScorerReplica`: HF scorer replicas with dynamic batching; `HttpFront`: the routes);
- `launcher`: a local Ray instance of our own, or an existing cluster; deploy and stop;
- `watchdog`: stops a local Ray instance whose launcher died.

Nothing here is imported by the library below it; `vq_reward.cli.serve_ray` is the command line.
"""
