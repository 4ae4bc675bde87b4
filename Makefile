# Project tasks. `make test` is what CI runs (.ci/run).
GO ?= go

.DEFAULT_GOAL := test
.PHONY: test demo bench rabbitmq

## test: start (or install) a local RabbitMQ if needed, vet, then the whole suite with -race.
test:
	bash scripts/ensure-rabbitmq.sh
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 8m ./...

## demo: run the example gateway and worker on a local RabbitMQ, send them tasks, show what arrives.
demo:
	bash scripts/ensure-rabbitmq.sh
	GO="$(GO)" bash scripts/demo.sh

## bench: run the benchmarks (no tests).
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

## rabbitmq: only make sure the local broker is up.
rabbitmq:
	bash scripts/ensure-rabbitmq.sh
