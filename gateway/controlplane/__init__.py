"""The control plane: provision, doctor and the Open Zaak export; the request path never imports it."""
