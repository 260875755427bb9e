"""The shared library of media-nommer: job model, settings and the four seams
(job store, queues, fleet, storage) that the feeder and the encoders use."""
