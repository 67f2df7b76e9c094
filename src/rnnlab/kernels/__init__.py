"""CPU kernels for the recurrence and the output layer, and the timed choice between them and the
plain torch ops."""
