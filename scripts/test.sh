#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite: unit, integration (real nats-server) and end-to-end
# (three real marmot processes). Pass MARMOT_TEST_PROFILE=long for the long randomized runs.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
npm test
