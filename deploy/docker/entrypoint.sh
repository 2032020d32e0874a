#!/bin/sh
# Container entry point: one image, the first argument picks the role.
#
#   api     an HTTP API replica: rsd serve on 0.0.0.0:8000 (WEB_CONCURRENCY uvicorn processes, default 1;
#           with REDIS_URL set it queues jobs for the workers, without it it runs the embedded worker)
#   worker  a model worker on the Redis Streams queue, its /metrics on port 9101
#   other   run as a command: `rsd upscale ...`, `rsd export tensorrt ...`, `sh`
#
# Extra arguments are passed on; a repeated option wins over the default above it
# (`worker --metrics-port 9200`, `api --port 8001`).
set -eu

role="${1:-api}"
if [ "$#" -gt 0 ]; then
  shift
fi

case "$role" in
  api)
    exec rsd serve --host 0.0.0.0 --port 8000 --workers "${WEB_CONCURRENCY:-1}" "$@"
    ;;
  worker)
    exec rsd worker --metrics-port 9101 "$@"
    ;;
  *)
    exec "$role" "$@"
    ;;
esac
