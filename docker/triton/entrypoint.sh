#!/usr/bin/env bash
# ENTRYPOINT of docker/Dockerfile: tritonserver with its administrative APIs locked by a key, its HTTP port behind the
# kit's front, and never serving an empty repository. Arguments are tritonserver's (the image's CMD, compose's
# `command`, Kubernetes' `args`); this script adds the restricted-API and HTTP flags itself, so no override of the
# arguments can leave them out.
#
# The key, first found wins:
#   TRITONKIT_ADMIN_KEY        environment (compose: docker/triton.env)
#   TRITONKIT_ADMIN_KEY_FILE   a file holding it (default /run/secrets/tritonkit_admin_key: a Kubernetes Secret or a
#                              compose secret mounted there)
#   neither: a random key that is never shown, so the restricted APIs are closed to everyone.
# Clients send it as HTTP header `tritonkit-admin-key`; gRPC clients as metadata
# `triton-grpc-protocol-tritonkit-admin-key` (Triton 2.51 prefixes restricted gRPC headers).
#
# The HTTP front (front.py, builder/serving/front.py in the kit; docs/security.md): Triton 2.51's HTTP frontend
# allocates the shape a JSON request declares before it looks at the data, so a 95-byte request can take the
# server's memory. The front listens where --http-address/--http-port say (Triton's defaults 0.0.0.0:8000), refuses a
# request whose declared shapes its bytes do not cover, and passes the rest to Triton's HTTP on
# 127.0.0.1:$TRITONKIT_TRITON_HTTP_PORT (default 18000), which answers nothing without the front's per-start key.
# gRPC needs no front: Triton checks a gRPC request's shapes against its bytes before allocating.
#   TRITONKIT_MAX_BODY_MB      the largest request body the front accepts, inflated (default 64)
#   TRITONKIT_FRONT            where front.py is (default: beside this script)
set -euo pipefail

# What a request could use to change the server or write files on it: load/unload models (with files: code
# execution), register shared memory, write trace and log files anywhere the server may write. Inference, health,
# metadata, model config and statistics stay open (clients, probes and the smoke test use them).
RESTRICTED="model-repository,shared-memory,trace,logging"
OPEN_APIS="inference,health,metadata,model-config,statistics"   # open to clients, through the front only
HEADER="tritonkit-admin-key"

key_file=${TRITONKIT_ADMIN_KEY_FILE:-/run/secrets/tritonkit_admin_key}
if [[ -n "${TRITONKIT_ADMIN_KEY:-}" ]]; then
    key=$TRITONKIT_ADMIN_KEY origin="from TRITONKIT_ADMIN_KEY"
elif [[ -r "$key_file" ]]; then
    key=$(tr -d '\r\n' < "$key_file") origin="from ${key_file}"
else
    key=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
    origin="random, shown nowhere (no TRITONKIT_ADMIN_KEY, no ${key_file}): locked for everyone"
fi
unset TRITONKIT_ADMIN_KEY   # the server's Python stubs inherit the environment; they have no use for it
# The key goes into a flag of the form <apis>:<header>=<key>: characters that flag parsing or a header would split
# on are refused rather than silently cutting the key short.
if [[ ! "$key" =~ ^[A-Za-z0-9._~-]{16,}$ ]]; then
    echo "error: the admin key (${origin}) must be at least 16 characters of A-Z a-z 0-9 . _ ~ -" >&2
    echo "hint: make one with \`openssl rand -hex 32\`" >&2
    exit 64
fi
echo "triton-kit: ${RESTRICTED} APIs need header ${HEADER}; key ${origin}" >&2

# A local repository with no model would give a server that is "ready" with nothing to serve (strict readiness
# counts zero of zero models as all loaded). Object stores (s3://, gs://, as://) are left to the readiness probe.
repository=""
for arg in "$@"; do
    case "$arg" in --model-repository=*|--model-store=*) repository=${arg#*=} ;; esac
done
if [[ -n "$repository" && "$repository" != *://* ]]; then
    shopt -s nullglob
    configs=("$repository"/*/config.pbtxt)
    if (( ${#configs[@]} == 0 )); then
        echo "error: the model repository ${repository} holds no model (no <model>/config.pbtxt)" >&2
        echo "hint: build models (\`builder build\`) before \`docker build\`, or fill the volume first" \
             "(docker/k8s/fill-pvc); see docs/deployment.md" >&2
        exit 66
    fi
    # A KIND_GPU model on a container without a GPU fails to load and, with --exit-on-error, ends the server after a
    # long CUDA error; say it plainly instead. Only where every model loads (model control none).
    if [[ " $* " == *" --model-control-mode=none "* ]] && ! compgen -G "/dev/nvidia[0-9]*" > /dev/null; then
        gpu_models=$( (grep -l "KIND_GPU" "${configs[@]}" || true) | xargs -r -n1 dirname | xargs -r -n1 basename | tr '\n' ' ')
        if [[ -n "$gpu_models" ]]; then
            echo "error: this container sees no GPU, and these models are built for one (KIND_GPU): ${gpu_models}" >&2
            echo "hint: run it with a GPU (compose --profile gpu, docker/k8s/overlays/gpu, nvidia.com/gpu in KServe's" \
                 "resources), or rebuild those models without --device gpu" >&2
            exit 65
        fi
    fi
fi

http_address=0.0.0.0 http_port=8000 with_http=true
for arg in "$@"; do
    case "$arg" in
        --http-address=*) http_address=${arg#*=} ;;
        --http-port=*) http_port=${arg#*=} ;;
        --allow-http=false|--allow-http=0) with_http=false ;;
    esac
done
grpc_lock="--grpc-restricted-protocol=${RESTRICTED}:${HEADER}=${key}"
if [[ "$with_http" == false ]]; then
    exec tritonserver "$@" "--http-restricted-api=${RESTRICTED}:${HEADER}=${key}" "$grpc_lock"
fi

front=${TRITONKIT_FRONT:-$(dirname "$0")/front.py}
if [[ ! -r "$front" ]]; then
    echo "error: the HTTP front ${front} is missing" >&2
    echo "hint: the image copies builder/serving/front.py there (docker/Dockerfile); set TRITONKIT_FRONT otherwise" >&2
    exit 67
fi
behind=${TRITONKIT_TRITON_HTTP_PORT:-18000}
front_key=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
front_key_file=$(mktemp "${TMPDIR:-/tmp}/tritonkit-front-key.XXXXXX")   # mode 0600
printf '%s\n' "$front_key" > "$front_key_file"
echo "triton-kit: HTTP on ${http_address}:${http_port} through the front (bodies up to ${TRITONKIT_MAX_BODY_MB:-64} MiB," \
     "declared shapes checked); Triton's own HTTP on 127.0.0.1:${behind} answers the front only" >&2

# Triton's HTTP flags last, so they win over the caller's: loopback, its own port, every API behind a key.
tritonserver "$@" "--http-address=127.0.0.1" "--http-port=${behind}" \
    "--http-restricted-api=${RESTRICTED}:${HEADER}=${key}" \
    "--http-restricted-api=${OPEN_APIS}:tritonkit-front-key=${front_key}" "$grpc_lock" &
server=$!
python3 "$front" "--listen=${http_address}:${http_port}" "--upstream=${behind}" "--key-file=${front_key_file}" \
    "--max-body-mb=${TRITONKIT_MAX_BODY_MB:-64}" &
front_pid=$!
# SIGTERM/SIGINT go to Triton, which drains in-flight requests (--exit-timeout-secs); the front keeps answering them
# and stops after Triton.
trap 'kill -TERM "$server" 2>/dev/null || true' TERM INT
while true; do
    finished="" status=0
    wait -n -p finished "$server" "$front_pid" || status=$?
    if [[ "${finished:-}" == "$server" ]]; then
        break
    elif [[ "${finished:-}" == "$front_pid" ]]; then
        echo "error: the HTTP front exited (status ${status}); stopping the server so that the container restarts" >&2
        kill -TERM "$server" 2>/dev/null || true
        wait "$server" || true
        status=1
        break
    fi   # neither: a trapped signal woke us; wait on while Triton drains
done
kill -TERM "$front_pid" 2>/dev/null || true
wait "$front_pid" 2>/dev/null || true
rm -f "$front_key_file"
exit "$status"
