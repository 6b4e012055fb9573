"""Station health and the users' alert rules: `health` (pure), `rules` (the API's schema and store),
`evaluator` (`sensorhub alerts`), `alertlog` (reading the alert log, live for the dashboard)."""
