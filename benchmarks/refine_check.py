import torch, time, sys
torch.set_num_threads(1)
import dpq
from dpq.models.loading import load_float_model
from dpq.io.data import calibration_batches
from dpq.config import QuantConfig
m, tok, _ = load_float_model("smollm2-135m")
m.model.layers = m.model.layers[:2]; m.config.num_hidden_layers = 2
calib = calibration_batches(tok, "wikitext2", 8, 512, 0)
steps = int(sys.argv[1])
t = time.time()
s = dpq.quantize(m, tok, QuantConfig.for_method("dpq-gar", refine_steps=steps), calib=calib, progress=False)
print("seconds", time.time() - t)
for k, v in s.refine.items(): print(k, v)
