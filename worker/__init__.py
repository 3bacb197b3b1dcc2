"""The worker: consume jobs, bcrypt each license, publish the hash, ack."""
