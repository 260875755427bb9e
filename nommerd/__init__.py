"""nommerd, the encoder daemon: queue -> claim -> download -> ffmpeg -> upload -> state."""
