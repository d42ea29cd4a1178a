"""The live system: an edge server that runs any tail of one model, and (soon) the device client."""
