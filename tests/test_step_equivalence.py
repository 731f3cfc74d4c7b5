"""Performance edits to the SVI step must not change it: the loss and the gradients of a small
fixed case (every prior, soft/hard indicators, centred form, masks) are pinned to the values the
step gave before any optimisation (commit 3a29cec), for the same key and parameters. The
cases draw the weight noise with ``weight_noise="threefry"`` (the generator of that commit);
``ss-ghs-hash`` pins the default hash noise (``sparse_bnn.core.noise``) since it was introduced.

Each gradient is pinned by two numbers: its dot product with a fixed random probe (sensitive to
every entry and to their order) and its L2 norm. Regenerate only for an intended change of
behaviour: ``python tests/test_step_equivalence.py`` prints the current values.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
from flax import nnx

from sparse_bnn.train import loss_fn
from sparse_bnn.core.model import Masks, SparseBNN
from sparse_bnn.nets import MLP
from sparse_bnn.priors import get_prior

RTOL = 1e-5

CASES = {
    "ss-ghs": dict(prior="ss-ghs"),
    "ss-ghs-soft": dict(prior="ss-ghs", hard=False),
    "ss-ghs-centred": dict(prior="ss-ghs", centred=True),
    "ss-ghs-masked": dict(prior="ss-ghs", masked=True),
    "ss-gl": dict(prior="ss-gl"),
    "ss-ig": dict(prior="ss-ig"),
    "gaussian": dict(prior="gaussian"),
    "group-horseshoe": dict(prior="group-horseshoe"),
    "flat": dict(prior="flat"),
    "ss-ghs-hash": dict(prior="ss-ghs", weight_noise="hash"),
}


def make_case(name: str):
    """A 12-8-6-3 MLP, perturbed variational parameters, a batch of 16, fixed masks if asked."""
    options = {"weight_noise": "threefry", **CASES[name]}
    prior = get_prior(options.pop("prior"))
    masked = options.pop("masked", False)
    bnn = SparseBNN(MLP(12, (8, 6), 3, rngs=nnx.Rngs(0)), prior, n_data=100, **options)
    rng = np.random.default_rng(1)
    params = {k: v + jnp.asarray(rng.normal(0, 0.3, v.shape), jnp.float32)
              for k, v in sorted(bnn.init_params().items())}
    x = jnp.asarray(rng.normal(size=(16, 12)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 16), jnp.int32)
    masks = Masks()
    if masked:
        masks = Masks({"dense0": jnp.asarray([1, 1, 0, 1, 1, 1, 1, 0.0])},
                      {"layers.1.kernel": jnp.asarray(rng.integers(0, 2, (8, 6)), jnp.float32)})
    return bnn, params, x, y, masks


def step_summary(name: str) -> dict:
    """Loss terms and ``{param: (probe . grad, |grad|)}`` of one step with key ``PRNGKey(3)``."""
    bnn, params, x, y, masks = make_case(name)
    grad_fn = jax.value_and_grad(loss_fn(bnn), has_aux=True)
    (loss, (nll, kl)), grads = grad_fn(params, jax.random.PRNGKey(3), x, y, masks)
    probes = np.random.default_rng(2)
    summary = {"loss": float(loss), "nll": float(nll), "kl": float(kl), "grads": {}}
    for key in sorted(grads):
        grad = np.asarray(grads[key], np.float64)
        probe = probes.normal(size=grad.shape)
        summary["grads"][key] = (float(np.sum(grad * probe)), float(np.linalg.norm(grad)))
    return summary


PINNED = {'flat': {'grads': {'dense0.prec.loc': (-0.0039821109573623505, 0.021063420921564102),
                             'dense0.prec.rho': (0.005144435916920912, 0.009841131046414375),
                             'dense1.prec.loc': (0.00651398647224072, 0.01576993800699711),
                             'dense1.prec.rho': (0.02437206011316927, 0.009982545860111713),
                             'dense2.prec.loc': (-0.039060884990284796, 0.021704019978642464),
                             'dense2.prec.rho': (-0.011507293327046902, 0.010057364590466022),
                             'layers.0.bias.loc': (0.005738081139872059, 0.007021975140383943),
                             'layers.0.bias.rho': (-0.0055702952257447105, 0.028240185953918258),
                             'layers.0.kernel.loc': (-0.5651240818231018, 0.33411936002336795),
                             'layers.0.kernel.rho': (0.04232591362411671, 0.09786738288706578),
                             'layers.1.bias.loc': (-0.0035850502346547503, 0.011000780984477323),
                             'layers.1.bias.rho': (-0.01846748623491492, 0.024478128937959868),
                             'layers.1.kernel.loc': (-0.03131252810171559, 0.2522524171606671),
                             'layers.1.kernel.rho': (0.013495452104255698, 0.06919851647378505),
                             'layers.2.bias.loc': (0.1333527102519163, 0.21432767333810604),
                             'layers.2.bias.rho': (0.004529785675918093, 0.017409869418509284),
                             'layers.2.kernel.loc': (0.03770557475746769, 0.10821503155671533),
                             'layers.2.kernel.rho': (-0.05777156819956105, 0.04230937888450211)},
                   'kl': 18.705890655517578,
                   'loss': 19.81144142150879,
                   'nll': 1.1055513620376587},
          'gaussian': {'grads': {'layers.0.bias.loc': (-0.028895954037647352, 0.1312014720677632),
                                 'layers.0.bias.rho': (0.003530495458193985, 0.028251125340418945),
                                 'layers.0.kernel.loc': (-0.16518400132363664, 0.4166290380366107),
                                 'layers.0.kernel.rho': (0.05898857302284531, 0.09808559201638925),
                                 'layers.1.bias.loc': (-0.1367718109263671, 0.17676491690470195),
                                 'layers.1.bias.rho': (-0.009874008502169235, 0.024248320184638832),
                                 'layers.1.kernel.loc': (-0.3058572132774951, 0.3299946702385366),
                                 'layers.1.kernel.rho': (0.0134299303436235, 0.06930261994967223),
                                 'layers.2.bias.loc': (0.053646510212719135, 0.3374159997465282),
                                 'layers.2.bias.rho': (-0.010661394615118287, 0.018360449202818114),
                                 'layers.2.kernel.loc': (-0.03259240374175572, 0.29565876638621724),
                                 'layers.2.kernel.rho': (-0.07570750002093556, 0.04233384887231965)},
                       'kl': 10.038774490356445,
                       'loss': 11.358537673950195,
                       'nll': 1.31976318359375},
          'group-horseshoe': {'grads': {'dense0.s2_a.loc': (0.007208698510525954, 0.019321577393482257),
                                        'dense0.s2_a.rho': (0.003705898703740479, 0.028250543140941144),
                                        'dense0.s2_b.loc': (-0.005520743576165001, 0.013116912400683493),
                                        'dense0.s2_b.rho': (0.020709482368647864, 0.028250698538348024),
                                        'dense1.s2_a.loc': (0.021445312646505437, 0.019183937965866336),
                                        'dense1.s2_a.rho': (0.013472411541066029, 0.024462290824776977),
                                        'dense1.s2_b.loc': (-0.010809574039334725, 0.010041429503036511),
                                        'dense1.s2_b.rho': (-0.02071330343918669, 0.024464214891632547),
                                        'dense2.s2_a.loc': (0.020579755633470947, 0.012121623739083393),
                                        'dense2.s2_a.rho': (0.003198732823954403, 0.017293250868118313),
                                        'dense2.s2_b.loc': (0.001370657848322176, 0.010683161501154215),
                                        'dense2.s2_b.rho': (0.05020133674149555, 0.017288535860694964),
                                        'layers.0.bias.loc': (-0.20155191807207243, 0.24639011239301767),
                                        'layers.0.bias.rho': (-0.014537647972223188, 0.028498500704195948),
                                        'layers.0.kernel.loc': (0.8662977662437112, 0.8190094107097671),
                                        'layers.0.kernel.rho': (0.09561593991286164, 0.09743702347783056),
                                        'layers.1.bias.loc': (-0.015526204822070143, 0.23527516831046197),
                                        'layers.1.bias.rho': (0.0605089849971613, 0.024705163668804764),
                                        'layers.1.kernel.loc': (0.07141438016108007, 0.718308618021782),
                                        'layers.1.kernel.rho': (-0.013096259566183648, 0.06908888448553266),
                                        'layers.2.bias.loc': (-0.04200687930954383, 0.26428868309975345),
                                        'layers.2.bias.rho': (-0.0032767605518376416, 0.017533301311780373),
                                        'layers.2.kernel.loc': (-0.47755951500276406, 0.5837821772326167),
                                        'layers.2.kernel.rho': (0.05958400429792253, 0.04271739703695851),
                                        't2_a.loc': (0.0016897157266718991, 0.11301063001155853),
                                        't2_a.rho': (-0.003287291812073461, 0.01006162166595459),
                                        't2_b.loc': (-0.01962009300827216, 0.02183949202299118),
                                        't2_b.rho': (-0.030567303501318737, 0.010001269169151783)},
                              'kl': 12.398032188415527,
                              'loss': 13.900280952453613,
                              'nll': 1.5022488832473755},
          'ss-ghs': {'grads': {'dense0.s2_a.loc': (0.01586236409067158, 0.017646973974899737),
                               'dense0.s2_a.rho': (0.003702379633771532, 0.02824945611190692),
                               'dense0.s2_b.loc': (-0.002436306280101391, 0.014876653263179575),
                               'dense0.s2_b.rho': (0.020708346443717565, 0.02825223730690766),
                               'dense0.z.logit': (0.013362711200538769, 0.023634527687425053),
                               'dense1.s2_a.loc': (0.0035050379047781187, 0.009935767102583638),
                               'dense1.s2_a.rho': (0.00038753429835323115, 0.02446106849776286),
                               'dense1.s2_b.loc': (-0.025895051988599194, 0.013089386474088244),
                               'dense1.s2_b.rho': (0.008833542310987059, 0.024469728543170102),
                               'dense1.z.logit': (-0.011135761391252557, 0.015055921890085927),
                               'dense2.s2_a.loc': (0.01211539509193165, 0.011670631742044102),
                               'dense2.s2_a.rho': (0.008512772554054776, 0.01729190333292906),
                               'dense2.s2_b.loc': (-0.013110957198699673, 0.011966987161831137),
                               'dense2.s2_b.rho': (0.005488180195219655, 0.017293204016004537),
                               'layers.0.bias.loc': (-0.02044679774663434, 0.10457831503977653),
                               'layers.0.bias.rho': (0.012350226375765386, 0.027895043209039582),
                               'layers.0.kernel.loc': (0.11197760102226158, 0.36237892677200756),
                               'layers.0.kernel.rho': (0.1398797134037077, 0.09693417183526708),
                               'layers.1.bias.loc': (0.03955928426899788, 0.16971973697390008),
                               'layers.1.bias.rho': (0.0088753826644332, 0.024130932376171095),
                               'layers.1.kernel.loc': (-0.0487001661763294, 0.4352457498417693),
                               'layers.1.kernel.rho': (0.014052026013003985, 0.06853805693452579),
                               'layers.2.bias.loc': (0.4069734802027379, 0.35136439103838324),
                               'layers.2.bias.rho': (-0.009646751377038859, 0.01797978692896054),
                               'layers.2.kernel.loc': (0.029102839466696943, 0.27461603278391894),
                               'layers.2.kernel.rho': (-0.013250702922232821, 0.04224692918098674),
                               't2_a.loc': (-0.03960036853659973, 0.060888227075338364),
                               't2_a.rho': (-0.02737211499214984, 0.010002750903367996),
                               't2_b.loc': (-0.0028414895436145488, 0.007364608347415924),
                               't2_b.rho': (0.00939522634103683, 0.009985082782804966)},
                     'kl': 12.501962661743164,
                     'loss': 13.727952003479004,
                     'nll': 1.2259891033172607},
          'ss-ghs-centred': {'grads': {'dense0.s2_a.loc': (0.014691584037314801, 0.019374298816666632),
                                       'dense0.s2_a.rho': (0.003702954839205649, 0.02824818639967646),
                                       'dense0.s2_b.loc': (-0.0017250832801686692, 0.012670123946948272),
                                       'dense0.s2_b.rho': (0.020718126869862637, 0.028250992173165828),
                                       'dense0.z.logit': (0.013345456826494564, 0.023608680321761253),
                                       'dense1.s2_a.loc': (0.0027156568806119526, 0.01109760694436796),
                                       'dense1.s2_a.rho': (0.00038667265305701755, 0.024463183741197766),
                                       'dense1.s2_b.loc': (-0.021832250427850947, 0.011377862558307585),
                                       'dense1.s2_b.rho': (0.008832873427011181, 0.024468719052656233),
                                       'dense1.z.logit': (-0.011193622092858289, 0.01507263035687502),
                                       'dense2.s2_a.loc': (0.012100443954101946, 0.011400234409140864),
                                       'dense2.s2_a.rho': (0.008514522474105495, 0.01729436863996899),
                                       'dense2.s2_b.loc': (-0.014133091184814045, 0.01243769362384852),
                                       'dense2.s2_b.rho': (0.0054899359956567875, 0.017297534827000548),
                                       'layers.0.bias.loc': (-0.019735441658968206, 0.10593220493091755),
                                       'layers.0.bias.rho': (0.01235052469253868, 0.02789328550543582),
                                       'layers.0.kernel.loc': (0.10175164285982087, 0.3657396827636125),
                                       'layers.0.kernel.rho': (0.13986546090077706, 0.09693781921234748),
                                       'layers.1.bias.loc': (0.0424428452757838, 0.17090031602380445),
                                       'layers.1.bias.rho': (0.008880620608413641, 0.024134157391411972),
                                       'layers.1.kernel.loc': (-0.045111783143089626, 0.4375405913453743),
                                       'layers.1.kernel.rho': (0.014049151486440939, 0.06853962501750063),
                                       'layers.2.bias.loc': (0.4137319282463825, 0.35488345829894385),
                                       'layers.2.bias.rho': (-0.0096267549056545, 0.01798681480880615),
                                       'layers.2.kernel.loc': (0.025264225441271194, 0.2769312797565347),
                                       'layers.2.kernel.rho': (-0.01324080492510353, 0.042246195019313953),
                                       't2_a.loc': (-0.044983394655942616, 0.06916499137878418),
                                       't2_a.rho': (-0.02733636682095103, 0.009989687241613865),
                                       't2_b.loc': (-0.006034917992098022, 0.01564137637615204),
                                       't2_b.rho': (0.009391835037424568, 0.009981478564441204)},
                             'kl': 12.488454818725586,
                             'loss': 13.714414596557617,
                             'nll': 1.2259595394134521},
          'ss-ghs-hash': {'grads': {'dense0.s2_a.loc': (0.016067599911087124, 0.01766548609219557),
                                    'dense0.s2_a.rho': (0.003702456907926828, 0.028249457762409384),
                                    'dense0.s2_b.loc': (-0.002349174807363715, 0.01486028248299331),
                                    'dense0.s2_b.rho': (0.020708310144971247, 0.028252195145990873),
                                    'dense0.z.logit': (0.013369775976167042, 0.023628388053829424),
                                    'dense1.s2_a.loc': (0.0035232221647444107, 0.009957935529615788),
                                    'dense1.s2_a.rho': (0.000387430409475727, 0.02446113539453495),
                                    'dense1.s2_b.loc': (-0.025814201269021182, 0.01306038959116932),
                                    'dense1.s2_b.rho': (0.00883347182945636, 0.024469660486793568),
                                    'dense1.z.logit': (-0.011468652544241693, 0.01519649612368538),
                                    'dense2.s2_a.loc': (0.012107531289916127, 0.011685878517911068),
                                    'dense2.s2_a.rho': (0.008512716019985479, 0.017291907637778246),
                                    'dense2.s2_b.loc': (-0.013114627572386135, 0.01195335743275703),
                                    'dense2.s2_b.rho': (0.005488160762667811, 0.017293161521921282),
                                    'layers.0.bias.loc': (-0.0204236056871911, 0.10168673224016182),
                                    'layers.0.bias.rho': (0.012299022791182347, 0.02793532067812123),
                                    'layers.0.kernel.loc': (0.10859890671070346, 0.36374794168407387),
                                    'layers.0.kernel.rho': (0.1402350959481175, 0.09680227004283472),
                                    'layers.1.bias.loc': (0.04266992168568326, 0.1661937493989126),
                                    'layers.1.bias.rho': (0.008287274570678398, 0.024142213772563707),
                                    'layers.1.kernel.loc': (-0.039670565973091834, 0.42971136326155157),
                                    'layers.1.kernel.rho': (0.014011401169692194, 0.06849837440158674),
                                    'layers.2.bias.loc': (0.4117962705594206, 0.34847033656903753),
                                    'layers.2.bias.rho': (-0.011103036295050005, 0.017317179937354293),
                                    'layers.2.kernel.loc': (0.0076220643084619, 0.2746987475939339),
                                    'layers.2.kernel.rho': (-0.013092584362680975, 0.04242351009930768),
                                    't2_a.loc': (-0.03967328896790938, 0.06100034713745117),
                                    't2_a.rho': (-0.027373317896320783, 0.010003190487623215),
                                    't2_b.loc': (-0.0028847488683598687, 0.007476728409528732),
                                    't2_b.rho': (0.00939534464232563, 0.009985208511352539)},
                          'kl': 12.501962661743164,
                          'loss': 13.729734420776367,
                          'nll': 1.2277722358703613},
          'ss-ghs-masked': {'grads': {'dense0.s2_a.loc': (0.016004725482807954, 0.017512863294909704),
                                      'dense0.s2_a.rho': (0.003702410941165769, 0.028248208496011826),
                                      'dense0.s2_b.loc': (-0.0019186461928905572, 0.014814814058524861),
                                      'dense0.s2_b.rho': (0.02071866270849982, 0.028251273965443392),
                                      'dense0.z.logit': (0.01543499484545069, 0.021182677895176527),
                                      'dense1.s2_a.loc': (0.0025179495192472296, 0.009667453525345527),
                                      'dense1.s2_a.rho': (0.00038692281038338154, 0.02446320126062412),
                                      'dense1.s2_b.loc': (-0.025332681763104162, 0.01301912372821388),
                                      'dense1.s2_b.rho': (0.008832742187192245, 0.024468661277965015),
                                      'dense1.z.logit': (-0.00751622057597027, 0.010271660057957929),
                                      'dense2.s2_a.loc': (0.011187719310725059, 0.011249950979599164),
                                      'dense2.s2_a.rho': (0.008513309920489348, 0.017291070825681047),
                                      'dense2.s2_b.loc': (-0.012796176789871966, 0.012241042594830737),
                                      'dense2.s2_b.rho': (0.005487295269763201, 0.017294352831340006),
                                      'layers.0.bias.loc': (0.02578248256458598, 0.0888914342979601),
                                      'layers.0.bias.rho': (0.006903951824185323, 0.024236267977770787),
                                      'layers.0.kernel.loc': (0.6277333594892764, 0.3322931913185425),
                                      'layers.0.kernel.rho': (0.21725302240152322, 0.08375354657834981),
                                      'layers.1.bias.loc': (0.010454650139338727, 0.19847128631607183),
                                      'layers.1.bias.rho': (0.009332686214866173, 0.023929084922469982),
                                      'layers.1.kernel.loc': (0.11871887702201428, 0.19376178089614096),
                                      'layers.1.kernel.rho': (0.024913894719419384, 0.050259869072444674),
                                      'layers.2.bias.loc': (0.3677443301835789, 0.37459706639660506),
                                      'layers.2.bias.rho': (-0.009855702126520632, 0.017973456594545214),
                                      'layers.2.kernel.loc': (0.210157839518004, 0.15025900791378327),
                                      'layers.2.kernel.rho': (-0.012710158858539128, 0.042400243665516014),
                                      't2_a.loc': (-0.03858975294742305, 0.05933433771133423),
                                      't2_a.rho': (-0.027355427245303772, 0.009996652603149414),
                                      't2_b.loc': (-0.002241952378574968, 0.005810720380395651),
                                      't2_b.rho': (0.009393579762357905, 0.009983332827687263)},
                            'kl': 9.815049171447754,
                            'loss': 11.008232116699219,
                            'nll': 1.193183422088623},
          'ss-ghs-soft': {'grads': {'dense0.s2_a.loc': (0.01579940787949601, 0.01763857515971571),
                                    'dense0.s2_a.rho': (0.0037023744216898215, 0.02824946961340621),
                                    'dense0.s2_b.loc': (-0.0024620888256167064, 0.01488079588427274),
                                    'dense0.s2_b.rho': (0.020708481553240034, 0.028252273838422333),
                                    'dense0.z.logit': (0.013362424083321892, 0.023634520929421535),
                                    'dense1.s2_a.loc': (0.0034665114312335617, 0.009921947779445637),
                                    'dense1.s2_a.rho': (0.00038756957655796884, 0.024461058618423626),
                                    'dense1.s2_b.loc': (-0.025948087245483625, 0.013109862829599788),
                                    'dense1.s2_b.rho': (0.00883360832821468, 0.024469772643642928),
                                    'dense1.z.logit': (-0.010690735290443254, 0.014875901183602906),
                                    'dense2.s2_a.loc': (0.012150063326631351, 0.01166253695104651),
                                    'dense2.s2_a.rho': (0.008512819662061029, 0.01729194043417371),
                                    'dense2.s2_b.loc': (-0.013131490274376656, 0.011980986304792393),
                                    'dense2.s2_b.rho': (0.005488236769917351, 0.01729323842873467),
                                    'layers.0.bias.loc': (-0.017328604717707266, 0.10389104808557635),
                                    'layers.0.bias.rho': (0.01235483787113708, 0.02789484218480181),
                                    'layers.0.kernel.loc': (0.12589983344220118, 0.36337408351370953),
                                    'layers.0.kernel.rho': (0.1398701138161138, 0.09692689294485289),
                                    'layers.1.bias.loc': (0.022970537019241424, 0.1690832340630814),
                                    'layers.1.bias.rho': (0.008860969339819178, 0.024122912425022947),
                                    'layers.1.kernel.loc': (-0.05678438988111846, 0.4370696878342032),
                                    'layers.1.kernel.rho': (0.014083598711150759, 0.06853680676062468),
                                    'layers.2.bias.loc': (0.40206213591894246, 0.35104073471427544),
                                    'layers.2.bias.rho': (-0.009667115060478475, 0.017975542092498974),
                                    'layers.2.kernel.loc': (0.03781655161043542, 0.2761167160235968),
                                    'layers.2.kernel.rho': (-0.013250212746670377, 0.04224191124798402),
                                    't2_a.loc': (-0.03954379020945938, 0.06080123409628868),
                                    't2_a.rho': (-0.027371179683186416, 0.010002409107983112),
                                    't2_b.loc': (-0.002807925369888878, 0.007277616299688816),
                                    't2_b.rho': (0.00939513432892332, 0.009984984993934631)},
                          'kl': 12.501962661743164,
                          'loss': 13.727581977844238,
                          'nll': 1.2256194353103638},
          'ss-gl': {'grads': {'dense0.tau2.loc': (0.10285444871509149, 0.17780898035149179),
                              'dense0.tau2.rho': (0.003604974504931446, 0.028210865126802705),
                              'dense0.z.logit': (0.005401746379984698, 0.022430065992200866),
                              'dense1.tau2.loc': (0.03321700792142222, 0.15552599849387236),
                              'dense1.tau2.rho': (-0.03290105832175627, 0.024590498949698242),
                              'dense1.z.logit': (0.01241272251263253, 0.016665832789215847),
                              'dense2.tau2.loc': (0.011620126513853402, 0.03869901267169406),
                              'dense2.tau2.rho': (-0.020516448151873097, 0.01720084844894441),
                              'lam2.loc': (1.4547657144541672, 0.7768986821174622),
                              'lam2.rho': (-0.011264141417940493, 0.009981311857700348),
                              'layers.0.bias.loc': (0.05057242449144671, 0.13085623568274476),
                              'layers.0.bias.rho': (0.012894127831569669, 0.028012160578585982),
                              'layers.0.kernel.loc': (-0.012480194980498183, 0.4063464448947019),
                              'layers.0.kernel.rho': (0.030560470443387076, 0.0969395621239699),
                              'layers.1.bias.loc': (-0.03340823883293026, 0.15393937240161612),
                              'layers.1.bias.rho': (0.05661184329463537, 0.02415761673158133),
                              'layers.1.kernel.loc': (0.20272225636596888, 0.2849554455931753),
                              'layers.1.kernel.rho': (-0.06331878678035621, 0.0684045129025034),
                              'layers.2.bias.loc': (-0.44554205010986775, 0.27606948013393173),
                              'layers.2.bias.rho': (0.024198623268123456, 0.017320592039890018),
                              'layers.2.kernel.loc': (-0.234552968859343, 0.3533808575112562),
                              'layers.2.kernel.rho': (0.005740803631981475, 0.0426000244636491)},
                    'kl': 11.894112586975098,
                    'loss': 12.938248634338379,
                    'nll': 1.0441362857818604},
          'ss-ig': {'grads': {'dense0.z.logit': (-0.011741194333439772, 0.025098931785749748),
                              'dense1.z.logit': (-0.004180865704753227, 0.01377822850559607),
                              'layers.0.bias.loc': (0.24806266013422631, 0.3546186421399352),
                              'layers.0.bias.rho': (0.02393767386916399, 0.027899186774245244),
                              'layers.0.kernel.loc': (0.02394617569233981, 0.7851988978621429),
                              'layers.0.kernel.rho': (0.011620442981414347, 0.09702493341575333),
                              'layers.1.bias.loc': (-0.033092566140245194, 0.18587164347677326),
                              'layers.1.bias.rho': (-0.06059715839838975, 0.024388307736428798),
                              'layers.1.kernel.loc': (0.7800950184373066, 0.4536158998313802),
                              'layers.1.kernel.rho': (0.029204641416401916, 0.06822936884814115),
                              'layers.2.bias.loc': (0.20189269588748632, 0.363408722887962),
                              'layers.2.bias.rho': (-0.009444129221842583, 0.01800689148984179),
                              'layers.2.kernel.loc': (-0.6055257290375281, 0.3756342615695747),
                              'layers.2.kernel.rho': (0.015096136928780835, 0.042312542992331836)},
                    'kl': 10.269121170043945,
                    'loss': 11.538771629333496,
                    'nll': 1.2696505784988403}}


@pytest.mark.parametrize("name", sorted(CASES))
def test_step_matches_pinned_values(name):
    expected, actual = PINNED[name], step_summary(name)
    for term in ("loss", "nll", "kl"):
        np.testing.assert_allclose(actual[term], expected[term], rtol=RTOL, err_msg=f"{name}: {term}")
    assert sorted(actual["grads"]) == sorted(expected["grads"])
    for key, (probe, norm) in expected["grads"].items():
        got_probe, got_norm = actual["grads"][key]
        np.testing.assert_allclose(got_norm, norm, rtol=RTOL, atol=1e-7, err_msg=f"{name}: |d loss / d {key}|")
        # The probe sum can cancel; measure its error against the gradient's size.
        np.testing.assert_allclose(got_probe, probe, rtol=RTOL, atol=RTOL * norm + 1e-7,
                                   err_msg=f"{name}: probe . d loss / d {key}")


def test_partitionable_noise_option_is_the_jax_setting_scoped_to_the_guide():
    """With ``weight_noise="threefry"``, ``partitionable_noise=False`` gives exactly the step JAX
    gives under the global setting ``jax_threefry_partitionable=False``, and differs from the
    partitionable stream."""
    bnn, params, x, y, masks = make_case("ss-ghs")
    key = jax.random.PRNGKey(3)
    with jax.threefry_partitionable(False):
        global_setting = jax.jit(jax.grad(lambda p: loss_fn(bnn)(p, key, x, y, masks)[0]))(params)
    bnn.partitionable_noise = False
    option = jax.jit(jax.grad(lambda p: loss_fn(bnn)(p, key, x, y, masks)[0]))(params)
    for name in params:
        np.testing.assert_allclose(option[name], global_setting[name], rtol=RTOL, atol=1e-7, err_msg=name)

    # The guide's draws come from another stream than the default one's.
    def weight_draw(partitionable):
        bnn.partitionable_noise = partitionable
        guide = numpyro.handlers.substitute(numpyro.handlers.seed(bnn.guide, key), data=params)
        return np.asarray(guide(x, y, masks)["layers.0.kernel"] - params["layers.0.kernel.loc"])

    default_noise, option_noise = weight_draw(None), weight_draw(False)
    assert np.linalg.norm(option_noise - default_noise) > 0.5 * np.linalg.norm(default_noise)


if __name__ == "__main__":
    import pprint
    pprint.pprint({name: step_summary(name) for name in CASES}, width=110)
