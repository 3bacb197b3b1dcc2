"""Every tunable default in one place; each flag's default comes from here."""

#: Broker URL when neither --amqp-url nor VIRTSCALE_AMQP_URL is given (loopback development only).
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"

#: Job queue name; results go to "<queue>.hashed" and dead letters to "<queue>.dead".
QUEUE = "licenses"

#: Deliveries of one job before the broker dead-letters it (a poison message never loops forever).
DELIVERY_LIMIT = 5

#: AMQP heartbeat in seconds: how fast a silently dead TCP connection is noticed.
HEARTBEAT = 30

#: Seconds the first reconnect waits; doubles each attempt (with jitter) up to RECONNECT_MAX.
RECONNECT_INITIAL = 0.5

#: Longest wait between two reconnect attempts, in seconds.
RECONNECT_MAX = 30.0

#: Most seconds of random jitter added to each reconnect wait (to the broker or to libvirtd), so
#: that clients cut off at once do not all come back at the same instant; no more than
#: RECONNECT_INITIAL, so that each wait is still at least as long as the one before.
RECONNECT_JITTER = RECONNECT_INITIAL

#: Seconds a connection may stay blocked by the broker (a memory or disk alarm) before pika
#: drops it: long enough for an alarm to clear, short enough that a stuck client reconnects.
BLOCKED_CONNECTION_TIMEOUT = 60.0

#: Seconds between publishes in the producer (the original's "delta").
DELTA = 1.0

#: Published but unconfirmed messages the producer keeps in flight at most.
MAX_OUTSTANDING = 2000

#: Seconds the producer publishes nothing after the broker nacked or returned a publish: a job
#: queue at a length limit (overflow reject-publish) nacks every publish until its consumers make
#: room, so publishing again at once would spin; long enough for a worker to take some jobs.
REPUBLISH_DELAY = 1.0

#: bcrypt cost factor (log2 rounds) the worker uses.
BCRYPT_COST = 12

#: bcrypt hashes at most 72 bytes; longer input would be silently truncated, so it is refused.
LICENSE_MAX_BYTES = 72

#: Largest job body accepted, in bytes; anything larger is dead-lettered unread.
MAX_BODY_BYTES = 4096

#: SQLite store the collector writes to.
STORE_URL = "sqlite:///var/virtscale/hashes.db"

#: Rows the collector inserts per transaction at most.
COLLECTOR_BATCH = 500

#: Seconds a partial batch waits before the collector commits it anyway.
COLLECTOR_FLUSH_INTERVAL = 0.2

#: Seconds between two log lines about a store that still cannot write: the first failure is
#: reported at once, then one line per interval says what is still wrong (retries in between
#: are silent; they back off up to RECONNECT_MAX, so one interval sees at least one retry).
STORE_OUTAGE_REPORT_INTERVAL = 30.0

#: The PostgreSQL store `make postgres` creates on this machine, and the file holding its
#: password: what `make test` and `make bench` use unless told otherwise.
DEV_POSTGRES_URL = "postgresql://virtscale@127.0.0.1:5432/virtscale"
DEV_POSTGRES_PASSWORD_FILE = "var/secrets/postgres"

#: Seconds between progress lines on long runs.
PROGRESS_INTERVAL = 5.0

#: Seconds between scaler ticks.
SCALER_INTERVAL = 5.0

#: Seconds of CPU history the scaler averages per domain.
CPU_WINDOW = 30.0

#: RabbitMQ management API the scaler reads the queue from.
MANAGEMENT_URL = "http://127.0.0.1:15672"

#: Seconds one bcrypt cost-12 hash takes in one TCG guest vCPU, for the simulator: cost 10 took
#: 127 ms in an uncontended guest (51 ms natively) and cost 12 is four times the rounds.
SIM_SERVICE_TIME = 0.5

#: Seconds from a domain's start to its worker consuming, for the simulator: a TCG guest took
#: 19-24 s alone and up to 40 s while other guests loaded the host.
SIM_BOOT_DELAY = 30.0

#: Seconds from a saved domain's start (a restore) to its worker consuming, for the simulator:
#: `python -m bench warm` measured 1.6 s at p50 in a TCG guest (1.4-2.7 s in nine of ten runs).
SIM_WARM_BOOT_DELAY = 2.0

#: Seconds from a stopped VM's last job drained to its domain being off, for the simulator: the
#: guest's systemd has only the worker's unit left to stop before it powers off. An estimate, not
#: measured; it only adds to the VM-seconds of each scale-down.
SIM_SHUTDOWN_DELAY = 3.0

#: Header that carries why a message was dead-lettered.
REASON_HEADER = "x-virtscale-reason"

# -- The pool's lease, held by the one scaler that acts (scaler/leadership.py; README, "Several
# scalers on one pool"). Safe because LEASE_VALIDITY + LEASE_ACTION_MARGIN < 2 x LEASE_HEARTBEAT.

#: AMQP heartbeat of the lease's connection, in seconds. RabbitMQ checks every heartbeat for bytes
#: from the client and closes the connection after two checks without any: a silent leader's lease
#: is freed more than 2 and at most 3 heartbeats (10-15 s) after the last byte it sent.
LEASE_HEARTBEAT = 5

#: Seconds after sending a check that the broker confirmed during which the leader may still act:
#: three checks may go unanswered before it stops.
LEASE_VALIDITY = 2.0

#: Seconds between the leader's checks of its lease (a passive declare on the lease's connection).
LEASE_CHECK_INTERVAL = 0.5

#: Seconds an action begun just before the validity ran out is given to finish (a libvirt start or
#: ACPI shutdown returns in well under a second here).
LEASE_ACTION_MARGIN = 1.5

#: Seconds between a standby's probes of the lease (a mandatory publish, returned once no scaler
#: holds it). A takeover adds this and LEASE_VALIDITY + LEASE_ACTION_MARGIN to the moment the
#: broker frees the lease: 4 s, within one tick at the default interval.
LEASE_PROBE_INTERVAL = 0.5

#: Seconds of work each hashing slot of a worker holds unacked when its prefetch is sized by
#: time (the default): one job per slot leaves a slot idle for a confirm round trip between two
#: jobs, most of a cost-4 job (under 1 ms); a second of work hides it while a new VM still
#: takes no more than a second's worth from the queue.
PREFETCH_SECONDS = 1.0

#: Weight of the newest job's hashing time in a worker's mean (after the first job per slot,
#: which set it): a job's time is noisy, the mean moves with the host's load only.
HASH_TIME_SMOOTHING = 0.05

#: Factor by which the sized prefetch must differ from the current one before the worker
#: changes it, and seconds between two changes at least: a change re-subscribes the consumer
#: (RabbitMQ applies a new prefetch only to a new consumer), and the deliveries in flight to the
#: old one go back to the queue, so it must stay rare. A hash's time on a loaded host wobbles by
#: more than 2x from one job to the next (measured: 1.3-17 ms at cost 4 beside other load).
PREFETCH_CHANGE_FACTOR = 2.0
PREFETCH_CHANGE_INTERVAL = 30.0

#: Seconds at least between two passes of a worker's I/O loop that publish finished hashes: under
#: load one pass then publishes several, in one send, and one multiple ack settles their jobs, so
#: the broker commits one batch to its quorum queues where it committed one per job. Measured
#: (make bench, 2 slots): at cost 4 the worker's own CPU per job fell from about 240 us to 65 us;
#: at cost 10 the broker's CPU per job from 1.65 ms to 0.65 ms (at 100 ms). At most
#: RESULTS_INTERVAL_SHARE of the work a slot holds beyond the job it hashes, so that the delay
#: never leaves a slot waiting for its next job. A result's hashed_at is still when it finished.
RESULTS_INTERVAL = 0.1
RESULTS_INTERVAL_SHARE = 0.1

#: Jobs timed before the prefetch is first sized: a first few hashes include the start-up.
PREFETCH_SETTLE_JOBS = 20
