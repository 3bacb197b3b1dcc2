# virtscale: `make demo` runs the whole system, `make test` runs the tests.
# Both do their own set-up (apt packages, .venv, RabbitMQ, libvirtd) and are idempotent.

SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
QUEUE ?= licenses
BROKER_HOST ?= 127.0.0.1:5672
SECRETS := var/secrets
# Each component connects as its own least-privilege user; the password comes from a file.
# BROKER_HOST may name several nodes of a cluster: BROKER_HOST="127.0.0.1:5681 127.0.0.1:5682".
# The VMs' own broker users are made and removed with the provisioner's password, when there is one.
provisioner = $(if $(wildcard $(SECRETS)/provisioner),--provisioner-password-file $(SECRETS)/provisioner)
as = $(foreach host,$(BROKER_HOST),--amqp-url amqp://$(1)@$(host)/%2F) --password-file $(SECRETS)/$(1) --queue $(QUEUE)

.PHONY: setup broker postgres image template vms unvms tag host-b producer worker collector stats scaler status demo test test-unit cloud-init \
	bench bench-policy lint clean chaos cluster cluster-stop mutate coverage
N ?= 3
COST ?= 12
# bcrypt cost in the demo VMs: a TCG guest hashes at cost 10 in about a tenth of a second.
DEMO_COST ?= 10
DOMAIN_TYPE ?= auto
NETWORK ?= user
NAME ?= worker-1
POOL ?= vm
CONNECT ?= qemu:///system
VCPUS ?= 1
MEMORY ?= 384
BROKER ?= 192.168.122.1

setup:
	@deploy/setup.sh

# make broker TLS=1: also a TLS listener on 5671 with a CA of its own (var/secrets/tls/ca.pem);
# PLAINTEXT=none closes the plaintext listener too (deploy/broker_tls.py).
TLS ?=
PLAINTEXT ?= keep
broker: setup
	@$(BIN)/python deploy/broker_accounts.py --queue $(QUEUE) --secrets-dir $(SECRETS)
	@if [ -n "$(TLS)" ]; then $(BIN)/python deploy/broker_tls.py --secrets-dir $(SECRETS) --plaintext $(PLAINTEXT); fi
	@$(BIN)/virtscale-broker declare --queue $(QUEUE)

# make postgres: PostgreSQL running, the collector's role and database made when missing, the
# password in var/secrets/postgres; prints the --store URL (deploy/postgres.sh).
postgres: setup
	@deploy/postgres.sh

image: setup
	@deploy/image/build.sh

# The pool's template (var/template/$(POOL).json): what every new pool VM is made of.
# Each VM gets a broker user of its own; with TLS=1 guests connect with amqps:// and the CA.
template: broker image
	@$(BIN)/python deploy/template.py --pool $(POOL) --queue $(QUEUE) --cost $(COST) --vcpus $(VCPUS) \
		--memory $(MEMORY) --domain-type $(DOMAIN_TYPE) --network $(NETWORK) --broker-host $(BROKER) \
		$(if $(TLS),--ca-file $(SECRETS)/tls/ca.pem)

# N VMs of the pool, defined shut off from the template (the scaler also creates more on demand).
vms: template
	@$(BIN)/python deploy/vms.py define --pool $(POOL) --count $(N) --connect $(CONNECT) --queue $(QUEUE) \
		--provisioner-password-file $(SECRETS)/provisioner

# Tag domains you made yourself as members of the pool: make tag DOMAINS="my-vm-1 my-vm-2".
tag: setup
	@$(BIN)/virtscale-scaler tag --pool $(POOL) --connect $(CONNECT) $(DOMAINS)

# A second libvirt host on this machine: the session daemon of the user virtscale-b.
host-b: setup
	@deploy/second_host.sh

cloud-init: broker
	@mkdir -p var/cloud-init
	@$(BIN)/python deploy/cloud_init.py --name $(NAME) --broker $(BROKER) --queue $(QUEUE) --cost $(COST) \
		> var/cloud-init/$(NAME).yaml && chmod 600 var/cloud-init/$(NAME).yaml
	@echo "cloud-init user-data: var/cloud-init/$(NAME).yaml"

unvms: setup
	@$(BIN)/python deploy/vms.py undefine --pool $(POOL) --connect $(CONNECT) $(provisioner)
	@if [ -S "$$(deploy/second_host.sh --socket)" ]; then \
		$(BIN)/python deploy/vms.py undefine --pool $(POOL) --connect "$$(deploy/second_host.sh --uri)" $(provisioner); fi

producer: broker
	$(BIN)/virtscale-producer $(call as,producer) $(ARGS)

worker: broker
	$(BIN)/virtscale-worker $(call as,worker) $(ARGS)

collector: broker
	$(BIN)/virtscale-collector run $(call as,collector) $(ARGS)

scaler: broker
	$(BIN)/virtscale-scaler run $(call as,scaler) $(provisioner) $(ARGS)

status: broker
	@$(BIN)/virtscale-scaler status $(call as,scaler) $(ARGS)

stats: setup
	@$(BIN)/virtscale-collector stats $(ARGS)

# The demo's pool grows over two hosts of this machine: qemu:///system and host-b (a session daemon).
demo: broker image host-b
	@$(MAKE) -s template COST=$(DEMO_COST)
	@# The demo's domains and volumes go when it ends, whatever its outcome.
	@status=0; deploy/demo.sh --vms $(N) --connect qemu:///system --connect "$$(deploy/second_host.sh --uri)" \
		|| status=$$?; $(MAKE) -s unvms; exit $$status

# make chaos: the system on real VMs under load and a fault schedule, on a RabbitMQ node of its own
# (deploy/chaos/run.py); DURATION = seconds of load, e.g. `make chaos DURATION=180`.
DURATION ?= 600
chaos: setup image
	@$(BIN)/python deploy/chaos/run.py --duration $(DURATION) --domain-type $(DOMAIN_TYPE) $(ARGS)

# make cluster: a 3-node RabbitMQ cluster beside the main broker (AMQP 5681-5683, management
# 15681-15683, data under var/cluster/), with the users and queues; make cluster-stop stops it.
cluster: setup
	@$(BIN)/python -m deploy.rabbitmq.cluster start --queue $(QUEUE) --secrets-dir $(SECRETS)

cluster-stop: setup
	@$(BIN)/python -m deploy.rabbitmq.cluster stop

# The tests and benchmarks also use the TLS listener (a VM over amqps://, the cost of TLS).
test bench: TLS = 1
test: broker postgres
	$(BIN)/python -m pytest $(ARGS)

test-unit: setup
	$(BIN)/python -m pytest tests/unit $(ARGS)

# make mutate: mutmut over the modules where a bug loses or leaks data or wrongly starts or stops
# VMs (setup.cfg's [mutmut]), under the unit tests and the broker and libvirt test-driver tests
# that take seconds; ends with `mutation score: K/N killed (P%)`. Equivalent survivors:
# tests/mutation/equivalent.txt. make coverage: branch coverage of the same modules under the
# same tests. Both work in var/mutate.
mutate: broker
	@$(BIN)/python -m tests.mutation mutate $(ARGS)

coverage: broker
	@$(BIN)/python -m tests.mutation coverage $(ARGS)

bench: broker postgres
	$(BIN)/python -m bench $(ARGS)

bench-policy: setup
	$(BIN)/python -m bench policy

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf var/virtscale var/demo
