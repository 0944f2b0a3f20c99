"""`v2g bridge`: the controller's host link <-> an OCPP 2.0.1/2.1 CSMS and the app over MQTT 5.

Modules: alink (asyncio host-link endpoint), ocpp (the charging station towards the
CSMS, a package of one module per OCPP functional block), mqtt_app (the app channel),
queue (disk-backed offline queue), backoff (OCPP reconnect back-off), auth (app tokens),
variables (settings <-> OCPP variables), config (config directory checks), service
(wires them together). See docs/bridge.md.
"""
