"""``python -m kernel -f <connection file>``: what the kernelspec launches."""

from kernel.deferred import run_on_first_use

run_on_first_use("aiohttp")  # before the SDK imports it: see kernel/deferred.py

from ipykernel.kernelapp import IPKernelApp  # noqa: E402

from kernel.jupyter.kernel import DurableKernel  # noqa: E402

if __name__ == "__main__":
    IPKernelApp.launch_instance(kernel_class=DurableKernel)
