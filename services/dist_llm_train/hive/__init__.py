"""hivemind as a second trainer (`ml.trainer: hivemind`): its peers train the same model, data and schedule
as the builtin PS protocols, on the same emulated links. `recipe` and `identity` are pure (no hivemind import);
`peer` (worker role) and `bootstrap` (PS role) need the hivemind image (docker/Dockerfile.hivemind)."""
