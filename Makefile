# Project tasks. `make test` is what CI runs (.ci/run).
GO ?= go

.DEFAULT_GOAL := test
.PHONY: test cluster-test soak demo bench reliability reliability-cluster rabbitmq cluster-up cluster-down

## test: start (or install) a local RabbitMQ if needed, vet, then the whole suite with -race,
## one package at a time (-p 1): the real-broker scenarios judge call latency, and the
## simulation's schedules in a package beside them would take both cores. The local 3-node
## cluster (scripts/rabbitmq-cluster.sh) boots in the background while vet and the build
## run (its log: CLUSTER_UP_LOG); the cluster tests wait for it (the script holds a lock) and
## start it themselves if that failed. It is torn down at the end, whether the suite passed
## or not.
CLUSTER_UP_LOG ?= $(or $(TMPDIR),/tmp)/mlproducer-cluster-up.log
test:
	bash scripts/ensure-rabbitmq.sh
	@# Build every test binary first, in parallel: -p 1 below, which keeps the
	@# tests that change the broker apart, would also build them one at a time.
	status=0; \
	bash scripts/rabbitmq-cluster.sh up >'$(CLUSTER_UP_LOG)' 2>&1 & up=$$!; \
	$(GO) vet ./... && $(GO) test -race -count=1 -exec /bin/true ./... >/dev/null || status=$$?; \
	if [ $$status = 0 ]; then $(GO) test -race -count=1 -p 1 -timeout 8m ./... || status=$$?; fi; \
	wait $$up || echo "make test: the background cluster start failed; see $(CLUSTER_UP_LOG)" >&2; \
	bash scripts/rabbitmq-cluster.sh down || true; \
	(cd internal/bench/chart && $(GO) vet ./... && $(GO) test -race -count=1 ./...) || status=$$?; \
	exit $$status

## cluster-test: only the tests on the local 3-node cluster (started if needed, left running
## for the next run; `make cluster-down` stops it).
CLUSTER_TESTS := ^TestCluster
cluster-test:
	bash scripts/ensure-rabbitmq.sh
	bash scripts/rabbitmq-cluster.sh up
	$(GO) test -race -count=1 -p 1 -timeout 8m -run '$(CLUSTER_TESTS)' . ./internal/rabbittest ./internal/reliability

## cluster-up / cluster-down: start or remove the local 3-node cluster.
cluster-up:
	bash scripts/rabbitmq-cluster.sh up
cluster-down:
	bash scripts/rabbitmq-cluster.sh down

## soak: the seeded simulation (TestSimulation) on new random seeds for SOAK (default 30m; one
## unit: 90s, 45m, 2h); a failing seed prints itself and its replay command.
SOAK ?= 30m
soak:
	secs=$$(echo '$(SOAK)' | awk '/^[0-9]+h$$/{print $$0*3600} /^[0-9]+m$$/{print $$0*60} /^[0-9]+s$$/{print $$0+0}'); \
	test -n "$$secs" || { echo "SOAK=$(SOAK): give one unit, like 90s, 45m or 2h" >&2; exit 2; }; \
	$(GO) test -race -count=1 -run '^TestSimulation$$' -sim.duration=$(SOAK) -timeout $$((secs + 300))s -v .

## demo: run the example gateway and worker on a local RabbitMQ, send them tasks, show what arrives.
demo:
	bash scripts/ensure-rabbitmq.sh
	GO="$(GO)" bash scripts/demo.sh

## bench: micro-benchmarks of the hot path on the fake broker, then the comparison with raw
## amqp091-go on the local RabbitMQ, with the quorum cases on the local 3-node cluster (left
## running: make cluster-down) (about 12 minutes; BENCHFLAGS=-quick for about two); then the chart
## of that run, BENCHMARKS-<body size>.svg (internal/bench/chart: a module of its own, so that its
## plotting dependency stays out of the library's go.sum), from the results kept in BENCHJSON.
BENCHJSON ?= $(or $(TMPDIR),/tmp)/mlproducer-bench.json
bench:
	bash scripts/ensure-rabbitmq.sh
	$(GO) test -run '^$$' -bench . -benchmem -count 3 .
	bash scripts/rabbitmq-cluster.sh up
	$(GO) run ./internal/bench -cluster -json '$(abspath $(BENCHJSON))' $(BENCHFLAGS)
	cd internal/bench/chart && $(GO) run . -in '$(abspath $(BENCHJSON))' -out '$(CURDIR)/BENCHMARKS'

## reliability: the reliability scenarios against the local RabbitMQ (faults, broker restart,
## memory alarm, 60 s of chaos), one PASS/FAIL line each and a table; fails if any fails.
reliability:
	bash scripts/ensure-rabbitmq.sh
	$(GO) run ./examples/reliability all

## reliability-cluster: the cluster scenario (64 callers, quorum queues, nodes stopped in turn,
## then no majority for 20 s) on the local 3-node cluster, started if needed.
reliability-cluster:
	bash scripts/ensure-rabbitmq.sh
	bash scripts/rabbitmq-cluster.sh up
	$(GO) run ./examples/reliability cluster

## rabbitmq: only make sure the local broker is up.
rabbitmq:
	bash scripts/ensure-rabbitmq.sh
