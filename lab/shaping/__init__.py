"""Link impairment: what each peer's link should do (plan), the backends that make the kernel
do it (netem, userspace), the measurement that checks it did (verify), and live changes."""
