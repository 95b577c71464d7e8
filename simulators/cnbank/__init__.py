"""The simulated `cnbank` agent bank: `bank.CnBankSimulator`, its `ledger`, and the `cnbank-sim` command (`main`)."""
