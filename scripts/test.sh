#!/usr/bin/env bash
# Sets everything up, checks formatting and lint (Biome, a second), then runs the whole test suite: unit, integration (real nats-server) and end-to-end
# (three real marmot processes), then the unit and integration tests again on Node.js 22 and 24.
# Pass MARMOT_TEST_PROFILE=long for the long randomized runs.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
npm run --silent lint
npm test
./scripts/test-node-versions.sh
