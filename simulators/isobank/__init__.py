"""The simulated `iso20022` agent bank over HTTPS with mutual TLS: `bank.IsoBankSimulator` and the `iso-sim` command (`main`)."""
