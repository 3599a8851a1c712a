"""The decoder's service layer: the gRPC server and servicer, proto <-> engine conversion, the encoder
client, media_id lookups in the shared cache, and the chat spans and metrics. It drives the engine core
(internvl_serve.decoder.engine) and never reaches into it past its public API.
"""
